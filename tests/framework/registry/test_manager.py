"""The plugin registry: where names come from, and how a recipe's options are checked.

Third-party plugins are real modules written into tmp_path (and, for the entry-point case, a real
`*.dist-info` directory that importlib.metadata reads), so pluggy loads them the way it would load
an installed package.
"""
from __future__ import annotations

import functools
import sys
from typing import Optional

import pytest
import torch

import plugins
from framework.config.schema import Component
from framework.config.validate import Problems
from framework.errors import UserError
from framework.registry import FAMILIES, Registry, build_registry, check_options

# What every built-in plugin module registers: (family, name) -> plugin module.
BUILTIN_NAMES = {
    ("dataset_loaders", "json"): "plugins.datasets",
    ("dataset_formats", "messages"): "plugins.formats",
    ("truncation", "right"): "plugins.truncation",
    ("packing", "none"): "plugins.packing",
    ("optimizers", "adamw"): "plugins.optimizers",
    ("schedulers", "linear"): "plugins.schedulers",
    ("loggers", "rich"): "plugins.loggers",
    ("loggers", "jsonl"): "plugins.loggers",
    ("loggers", "wandb"): "plugins.trackers",
    ("loggers", "tensorboard"): "plugins.trackers",
}

ACME = """\
from framework import hookimpl
import torch


def acme_sgd(param_groups, *, lr: float = 0.1, momentum: float = 0.0):
    return torch.optim.SGD(param_groups, lr=lr, momentum=momentum)


class AcmeLogger:
    def __init__(self, output_dir):
        self.output_dir = output_dir
        self.logged = []

    @hookimpl
    def seqtune_log(self, step, metrics):
        self.logged.append((step, metrics))


def acme_logger(output_dir, *, verbose: bool = False):
    return AcmeLogger(output_dir)


@hookimpl
def seqtune_register_optimizers():
    return {"acme_sgd": acme_sgd}


@hookimpl
def seqtune_register_loggers():
    return {"acme_log": acme_logger}
"""


def problems_for(file: str = "recipe.yaml") -> Problems:
    return Problems(lambda key: file)


def user_error(extra_modules=(), where: str = "recipe.yaml") -> UserError:
    with pytest.raises(UserError) as info:
        build_registry(list(extra_modules), where=lambda key: where)
    return info.value


# -- where names come from ---------------------------------------------------------------------

def test_builtins_are_listed_with_family_plugin_and_distribution():
    registry = build_registry()
    found = {(e.family, e.name): e for e in registry.all_entries()}
    for (family, name), plugin in BUILTIN_NAMES.items():
        entry = found.get((family, name))
        assert entry is not None, f"built-in {family} '{name}' is not registered"
        assert entry.plugin == plugin
        assert entry.distribution == "seqtune"
        assert entry.family == family and entry.name == name
        assert registry.entries[family][name] is entry
    # every built-in module contributes, and everything from a built-in module is seqtune's
    assert {e.plugin for e in registry.all_entries() if e.plugin in plugins.BUILTIN} == set(plugins.BUILTIN)
    for entry in registry.all_entries():
        if entry.plugin in plugins.BUILTIN:
            assert entry.distribution == "seqtune", entry
    assert set(registry.entries) == set(FAMILIES)


def test_builtin_factories_are_the_plugin_modules_functions():
    registry = build_registry()
    from plugins import datasets, formats, optimizers, truncation

    assert registry.entries["dataset_loaders"]["json"].factory is datasets.load_json
    assert registry.entries["dataset_formats"]["messages"].factory is formats.messages
    assert registry.entries["truncation"]["right"].factory is truncation.right
    assert registry.entries["optimizers"]["adamw"].factory is optimizers.adamw


def test_third_party_entry_point_is_found_with_its_distribution(distribution):
    distribution("seqtune_acme", "seqtune_acme", ACME, entry_name="acme")
    registry = build_registry()

    sgd = registry.entries["optimizers"].get("acme_sgd")
    assert sgd is not None, "the entry point in the 'seqtune' group was not loaded"
    assert sgd.plugin == "acme"
    assert sgd.distribution == "seqtune_acme"
    log = registry.entries["loggers"]["acme_log"]
    assert (log.plugin, log.distribution) == ("acme", "seqtune_acme")
    # built-ins are still there next to it
    assert registry.entries["optimizers"]["adamw"].distribution == "seqtune"

    # the third party's optimizer binds and builds like a built-in one
    problems = problems_for()
    make = registry.bind("optimizers", Component("acme_sgd", {"lr": 0.5}), problems, "optimizer")
    assert problems.lines == []
    param = torch.nn.Parameter(torch.zeros(2))
    opt = make([{"params": [param]}])
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["lr"] == 0.5


def test_dist_info_outside_sys_path_is_not_loaded(tmp_path):
    # the same folder, never put on sys.path: nothing from it is registered
    info = tmp_path / "seqtune_ghost-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: seqtune_ghost\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[seqtune]\nghost = seqtune_ghost\n")
    registry = build_registry()
    assert "ghost" not in {e.plugin for e in registry.all_entries()}


def test_entry_point_clashing_with_a_builtin_names_both_plugins_and_distributions(distribution):
    distribution("seqtune_clash", "seqtune_clash", """\
        from framework import hookimpl

        def adamw(param_groups, *, lr: float = 1.0):
            raise AssertionError("never called")

        @hookimpl
        def seqtune_register_optimizers():
            return {"adamw": adamw}
        """, entry_name="clash")
    error = user_error()
    (line,) = error.problems
    assert "optimizer 'adamw' is registered twice" in line
    assert "'plugins.optimizers'" in line and "'clash'" in line
    assert "seqtune_clash" in line and "(seqtune)" in line


def test_same_name_from_two_extra_modules_names_both(module_dir):
    source = """\
        from framework import hookimpl

        def keep_all(input_ids, labels, max_len):
            return input_ids, labels

        @hookimpl
        def seqtune_register_truncation():
            return {"keep_all": keep_all}
        """
    module_dir("dup_one", source)
    module_dir("dup_two", source)
    error = user_error(["dup_one", "dup_two"])
    (line,) = error.problems
    assert "truncation strategy 'keep_all' is registered twice" in line
    assert "'dup_one'" in line and "'dup_two'" in line


def test_extra_module_by_dotted_path_is_registered(module_dir, tmp_path):
    pkg = tmp_path / "acme_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    module_dir("acme_pkg/plugin", """\
        from framework import hookimpl

        def left(input_ids, labels, max_len):
            return input_ids[-max_len:], labels[-max_len:]

        @hookimpl
        def seqtune_register_truncation():
            return {"keep_left": left}
        """)
    try:
        registry = build_registry(["acme_pkg.plugin"])
        entry = registry.entries["truncation"]["keep_left"]
        assert entry.plugin == "acme_pkg.plugin"
        assert entry.distribution == "-"  # a loose module, shipped by no installed distribution
        assert entry.factory([1, 2, 3], [4, 5, 6], 2) == ([2, 3], [5, 6])
        assert "keep_left" not in build_registry().entries["truncation"]  # only when asked for
    finally:
        sys.modules.pop("acme_pkg.plugin", None)
        sys.modules.pop("acme_pkg", None)


def test_unimportable_extra_module_names_its_plugins_index(module_dir):
    module_dir("fine_plugin", "")
    error = user_error(["fine_plugin", "no_such_seqtune_plugin"], where="recipe.yaml")
    (line,) = error.problems
    assert line.startswith("recipe.yaml: plugins[1]: ")
    assert "no_such_seqtune_plugin" in line

    error = user_error(["no_such_seqtune_plugin"], where="recipe.yaml")
    assert error.problems[0].startswith("recipe.yaml: plugins[0]: ")


def test_misspelt_hookimpl_name_is_an_error_with_did_you_mean(module_dir):
    module_dir("typo_plugin", """\
        from framework import hookimpl

        @hookimpl
        def seqtune_register_optimizer():
            return {}
        """)
    error = user_error(["typo_plugin"])
    (line,) = error.problems
    assert "'typo_plugin'" in line
    assert "seqtune_register_optimizer'" in line
    assert "did you mean 'seqtune_register_optimizers'?" in line


def test_misspelt_hookimpl_in_an_entry_point_is_an_error(distribution):
    distribution("seqtune_typo", "seqtune_typo", """\
        from framework import hookimpl

        @hookimpl
        def seqtune_train_started(run):
            pass
        """, entry_name="typo")
    error = user_error()
    assert any("'typo'" in p and "did you mean 'seqtune_train_start'?" in p for p in error.problems)


def test_hookimpl_with_a_wrong_argument_name_is_an_error(module_dir):
    module_dir("badarg_plugin", """\
        from framework import hookimpl

        @hookimpl
        def seqtune_log(step, metric):
            pass
        """)
    error = user_error(["badarg_plugin"])
    text = str(error)
    assert "'badarg_plugin'" in text
    assert "seqtune_log" in text and "metric" in text


def test_registry_problems_are_single_lines(module_dir):
    """UserError's contract: each problem is one line (the CLI prints them as bullets)."""
    module_dir("badarg_plugin2", """\
        from framework import hookimpl

        @hookimpl
        def seqtune_checkpoint_saved(step, where):
            pass
        """)
    error = user_error(["badarg_plugin2"])
    for line in error.problems:
        assert "\n" not in line, f"a problem spans several lines: {line!r}"


def test_unknown_name_did_you_mean_or_list():
    registry = build_registry()
    problems = problems_for("recipe.yaml")
    assert registry.get("optimizers", "adamww", problems, "optimizer") is None
    assert problems.lines == ["recipe.yaml: optimizer: unknown optimizer 'adamww'; did you mean 'adamw'?"]

    problems = problems_for("recipe.yaml")
    assert registry.get("schedulers", "zzz", problems, "scheduler") is None
    (line,) = problems.lines
    assert line.startswith("recipe.yaml: scheduler: unknown scheduler 'zzz'; expected one of: ")
    assert "linear" in line

    problems = problems_for()
    assert registry.get("loggers", "jsonl", problems, "logging.loggers[0]").name == "jsonl"
    assert problems.lines == []


# -- option checking ---------------------------------------------------------------------------

def opt_factory(param_groups, weight_decay=0.0, *, lr: float = 0.1, nesterov: bool = False,
                warmup: Optional[int] = None):
    return {"lr": lr, "nesterov": nesterov, "warmup": warmup}


def required_factory(param_groups, *, lr: float, eps: float = 1e-8):
    return lr


def kwargs_factory(output_dir, *, every: int = 1, **settings):
    return settings


def check(factory, options, path="optimizer"):
    problems = problems_for()
    return check_options(factory, options, problems, path), problems.lines


def test_keyword_only_parameters_are_the_options():
    checked, lines = check(opt_factory, {"lr": 0.5, "nesterov": True, "warmup": 3})
    assert lines == []
    assert checked == {"lr": 0.5, "nesterov": True, "warmup": 3}

    # a positional-or-keyword parameter is a runtime input, not a recipe option
    checked, lines = check(opt_factory, {"weight_decay": 0.1})
    assert checked is None
    assert lines == ["recipe.yaml: optimizer.weight_decay: unknown option; expected one of: lr, nesterov, warmup"]


def test_unknown_option_did_you_mean():
    checked, lines = check(opt_factory, {"lrr": 0.5})
    assert checked is None
    assert lines == ["recipe.yaml: optimizer.lrr: unknown option; did you mean 'lr'?"]


def test_wrong_option_type_is_an_error():
    checked, lines = check(opt_factory, {"lr": "fast"})
    assert checked is None
    (line,) = lines
    assert line.startswith("recipe.yaml: optimizer.lr: ")
    assert "expected float" in line and "str" in line

    checked, lines = check(opt_factory, {"nesterov": "yes", "warmup": 2.5})
    assert checked is None
    assert len(lines) == 2
    assert any(line.startswith("recipe.yaml: optimizer.nesterov: expected bool") for line in lines)
    assert any(line.startswith("recipe.yaml: optimizer.warmup: ") for line in lines)


def test_an_int_for_a_float_option_becomes_a_float_and_null_fits_optional():
    checked, lines = check(opt_factory, {"lr": 1, "warmup": None})
    assert lines == []
    assert checked == {"lr": 1.0, "warmup": None}
    assert isinstance(checked["lr"], float)


def test_missing_required_option_is_an_error():
    checked, lines = check(required_factory, {"eps": 1e-6})
    assert checked is None
    assert lines == ["recipe.yaml: optimizer.lr: missing required option"]
    checked, lines = check(required_factory, {"lr": 0.3})
    assert (checked, lines) == ({"lr": 0.3}, [])


def test_var_keyword_factory_accepts_any_option_but_still_checks_declared_ones():
    checked, lines = check(kwargs_factory, {"colour": "blue", "levels": [1, 2], "every": 5},
                           path="logging.loggers[0]")
    assert lines == []
    assert checked == {"colour": "blue", "levels": [1, 2], "every": 5}

    checked, lines = check(kwargs_factory, {"every": "often"}, path="logging.loggers[0]")
    assert checked is None
    assert lines[0].startswith("recipe.yaml: logging.loggers[0].every: expected int")


def test_several_option_problems_are_reported_together():
    checked, lines = check(required_factory, {"lrr": 1.0, "eps": "tiny"})
    assert checked is None
    joined = "\n".join(lines)
    assert "optimizer.lrr: unknown option; did you mean 'lr'?" in joined
    assert "optimizer.eps: expected float" in joined
    assert "optimizer.lr: missing required option" in joined
    assert len(lines) == 3


def test_bind_applies_options_with_partial():
    registry = build_registry()
    problems = problems_for()
    make = registry.bind("optimizers", Component("adamw", {"lr": 0.25, "betas": [0.8, 0.9]}),
                         problems, "optimizer")
    assert problems.lines == []
    assert isinstance(make, functools.partial)
    assert make.keywords == {"lr": 0.25, "betas": [0.8, 0.9]}
    param = torch.nn.Parameter(torch.zeros(3))
    opt = make([{"params": [param]}])
    assert opt.param_groups[0]["lr"] == 0.25
    assert opt.param_groups[0]["betas"] == (0.8, 0.9)


def test_bind_without_options_and_with_bad_options():
    registry = build_registry()
    problems = problems_for()
    make = registry.bind("truncation", Component("right"), problems, "data.truncation")
    assert problems.lines == []
    assert make([1, 2, 3], [1, 2, 3], 2) == ([1, 2], [1, 2])

    problems = problems_for()
    assert registry.bind("optimizers", Component("adamw", {"lr": "fast"}), problems, "optimizer") is None
    assert len(problems.lines) == 1 and "optimizer.lr" in problems.lines[0]

    # an unknown name with options points at the `name` key; without options at the key itself
    problems = problems_for()
    assert registry.bind("optimizers", Component("adamx", {"lr": 1.0}), problems, "optimizer") is None
    assert problems.lines == ["recipe.yaml: optimizer.name: unknown optimizer 'adamx'; did you mean 'adamw'?"]
    problems = problems_for()
    assert registry.bind("packing", Component("bins"), problems, "data.packing") is None
    assert problems.lines[0].startswith("recipe.yaml: data.packing: unknown packing strategy 'bins'")


def test_option_with_an_annotation_the_checker_does_not_know_does_not_crash():
    """A third-party option typed `tuple[float, float]` must bind or be reported, never a KeyError."""

    def factory(param_groups, *, betas: tuple[float, float] = (0.9, 0.99)):
        return betas

    problems = problems_for()
    checked = check_options(factory, {"betas": [0.9, 0.95]}, problems, "optimizer")
    assert checked is not None or problems.lines


def test_option_types_of_a_class_factory_are_checked():
    """A class is a factory too: its __init__'s keyword-only annotations are the option types."""

    class Logger:
        def __init__(self, output_dir: str, *, every: int = 1):
            self.every = every

    checked, lines = check(Logger, {"every": "often"}, path="logging.loggers[0]")
    assert checked is None
    assert lines and lines[0].startswith("recipe.yaml: logging.loggers[0].every: expected int")


def test_registry_is_built_fresh_each_time():
    first, second = build_registry(), build_registry()
    assert isinstance(first, Registry)
    assert first.pm is not second.pm
