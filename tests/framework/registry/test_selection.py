"""bind_parts: every plugin a loaded recipe selects, bound and checked before anything runs.

Each test runs in tmp_path, so error lines name the short relative recipe files it wrote.
"""
from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import pytest

from framework.registry import Parts, bind_parts
from framework.config import load_recipe
from framework.errors import UserError
from plugins import datasets, formats, loggers, truncation

HEAD = """\
output_dir: out
model:
  name_or_path: tiny-model
"""

DATA = """\
data:
  mixture:
    - source: rows.jsonl
      fraction: 1.0
"""


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rows.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    return tmp_path


@pytest.fixture
def write(here: Path):
    def _write(name: str, *texts: str) -> Path:
        """Each text is dedented on its own, then they are joined."""
        path = here / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(textwrap.dedent(text) for text in texts))
        return Path(name)

    return _write


def bind_problems(path: Path, overrides=()) -> list[str]:
    loaded = load_recipe(path, list(overrides))  # the recipe itself is valid
    with pytest.raises(UserError) as info:
        bind_parts(loaded)
    lines = info.value.problems
    for line in lines:
        assert "\n" not in line, line
    return lines


def test_valid_recipe_binds_every_part(write):
    path = write("recipe.yaml", HEAD, DATA, """\
        optimizer:
          name: adamw
          lr: 0.001
          weight_decay: 0.1
        scheduler:
          name: linear
          warmup_ratio: 0.1
        logging:
          loggers:
            - jsonl
            - name: rich
              show: [loss]
        """)
    parts = bind_parts(load_recipe(path))
    assert isinstance(parts, Parts)
    assert parts.loaders == [datasets.load_json]
    assert [make.func for make in parts.formats] == [formats.messages]  # bound like every family
    assert parts.truncation.func is truncation.right
    assert parts.truncation([1, 2, 3], [4, 5, 6], 2) == ([1, 2], [4, 5])
    assert isinstance(parts.optimizer, functools.partial)
    assert parts.optimizer.keywords == {"lr": 0.001, "weight_decay": 0.1}
    assert parts.scheduler.keywords == {"warmup_ratio": 0.1}
    assert [make.func for make in parts.loggers] == [loggers.jsonl, loggers.rich]
    assert parts.loggers[1].keywords == {"show": ["loss"]}
    assert "adamw" in parts.registry.entries["optimizers"]


def test_defaults_bind_without_any_plugin_keys(write):
    path = write("recipe.yaml", HEAD + DATA)
    parts = bind_parts(load_recipe(path))
    assert parts.optimizer.keywords == {}
    assert parts.packing().plan([3, 1, 2], 2, max_seq_length=8, seed=0)  # the default packing strategy works
    assert len(parts.loggers) == 2


def test_several_problems_are_reported_at_once_with_file_and_key(write):
    path = write("recipe.yaml", HEAD, """\
        data:
          mixture:
            - source: rows.jsonl
              fraction: 1.0
          truncation: lefty
        optimizer:
          name: adamw
          lrr: 0.001
        logging:
          loggers: [jsonl, wandbb]
        """)
    lines = bind_problems(path)
    assert len(lines) == 3, lines
    assert any(line.startswith("recipe.yaml: data.truncation: unknown truncation strategy 'lefty'")
               for line in lines), lines
    assert "recipe.yaml: optimizer.lrr: unknown option; did you mean 'lr'?" in lines
    assert "recipe.yaml: logging.loggers[1]: unknown logger 'wandbb'; did you mean 'wandb'?" in lines


def test_problems_name_the_file_or_override_that_set_the_key(write):
    write("base.yaml", HEAD, DATA, """\
        optimizer:
          name: adamw
          lrr: 0.001
        """)
    path = write("recipe.yaml", """\
        extends: base.yaml
        scheduler:
          name: linear
          warmup: 3
        """)
    lines = bind_problems(path)
    assert sorted(lines) == sorted([
        "base.yaml: optimizer.lrr: unknown option; did you mean 'lr'?",
        "recipe.yaml: scheduler.warmup: unknown option; did you mean 'warmup_steps'?",
    ])

    lines = bind_problems(path, ["optimizer.lr=fast"])
    assert any(line.startswith("override optimizer.lr=fast: optimizer.lr: expected float") for line in lines), lines


def test_wrong_option_type_and_missing_name(write):
    path = write("recipe.yaml", HEAD, DATA, """\
        optimizer:
          name: adamw
          lr: fast
        scheduler: cosine_warm
        """)
    lines = bind_problems(path)
    assert len(lines) == 2, lines
    assert any(line.startswith("recipe.yaml: optimizer.lr: expected float") for line in lines)
    assert any(line.startswith("recipe.yaml: scheduler: unknown scheduler 'cosine_warm'") for line in lines)


def test_unknown_suffix_with_auto_loader_names_the_mixture_entry(write, here):
    (here / "rows.txt").write_text("a,b\n1,2\n")
    path = write("recipe.yaml", HEAD, """\
        data:
          mixture:
            - source: rows.txt
              fraction: 1.0
        """)
    lines = bind_problems(path)
    assert len(lines) == 1, lines
    assert lines[0].startswith("recipe.yaml: data.mixture[0].source: cannot tell how to load 'rows.txt'")
    assert "data.mixture[0].loader" in lines[0]


def test_unknown_loader_and_format_name_their_keys(write):
    path = write("recipe.yaml", HEAD, """\
        data:
          mixture:
            - source: rows.jsonl
              fraction: 1.0
            - source: more.jsonl
              count: 3
              loader: jsn
              format: sharegtp
        """)
    lines = bind_problems(path)
    assert len(lines) == 2, lines
    assert "recipe.yaml: data.mixture[1].loader: unknown dataset loader 'jsn'; did you mean 'json'?" in lines
    assert "recipe.yaml: data.mixture[1].format: unknown dataset format 'sharegtp'; did you mean 'sharegpt'?" in lines


def test_recipe_plugins_register_extra_names(write, plugin_module):
    plugin_module("recipe_truncation_plugin", """\
        from framework import hookimpl

        def keep_ends(input_ids, labels, max_len, *, keep_first: int = 0):
            return input_ids[:keep_first] + input_ids[-(max_len - keep_first):], \\
                labels[:keep_first] + labels[-(max_len - keep_first):]

        @hookimpl
        def seqtune_register_truncation():
            return {"keep_ends": keep_ends}
        """)
    path = write("recipe.yaml", HEAD, DATA, """\
          truncation:
            name: keep_ends
            keep_first: 1
        plugins: [recipe_truncation_plugin]
        """)
    parts = bind_parts(load_recipe(path))
    assert parts.truncation([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], 3) == ([1, 4, 5], [1, 4, 5])
    assert parts.registry.entries["truncation"]["keep_ends"].plugin == "recipe_truncation_plugin"

    # without the recipe's plugins list the name is unknown
    plain = write("plain.yaml", HEAD, DATA + "  truncation: keep_ends\n")
    lines = bind_problems(plain)
    assert any(line.startswith("plain.yaml: data.truncation: unknown truncation strategy 'keep_ends'")
               for line in lines)


def test_unimportable_recipe_plugin_names_the_recipe_and_index(write):
    path = write("recipe.yaml", HEAD, DATA, """\
        plugins: [no_such_seqtune_plugin_module]
        """)
    with pytest.raises(UserError) as info:
        bind_parts(load_recipe(path))
    (line,) = info.value.problems
    assert line.startswith("recipe.yaml: plugins[0]: ")
    assert "no_such_seqtune_plugin_module" in line


def test_unimportable_plugin_from_an_extended_file_names_that_file(write):
    """Like every other recipe problem, a bad plugins entry names the file that set it."""
    write("base.yaml", HEAD, DATA, """\
        plugins: [no_such_seqtune_plugin_module]
        """)
    path = write("recipe.yaml", "extends: base.yaml\nrun_name: child\n")
    with pytest.raises(UserError) as info:
        bind_parts(load_recipe(path))
    (line,) = info.value.problems
    assert line.startswith("base.yaml: plugins[0]: "), line


# -- a format's options --------------------------------------------------------------------------------

def test_a_format_takes_options_like_every_family(write):
    path = write("recipe.yaml", HEAD, """\
        data:
          mixture:
            - source: rows.jsonl
              fraction: 1.0
              format: {name: sharegpt, roles: {bot: assistant}, role_key: speaker}
        eval:
          mixture:
            - source: rows.jsonl
              fraction: 1.0
              format: {name: sharegpt, content_key: text}
        """)
    parts = bind_parts(load_recipe(path))
    assert parts.formats[0].func is formats.sharegpt
    assert parts.formats[0].keywords == {"roles": {"bot": "assistant"}, "role_key": "speaker"}
    assert parts.eval_formats[0].keywords == {"content_key": "text"}
    row = {"conversations": [{"speaker": "human", "value": "hi"}, {"speaker": "bot", "value": "yo"}]}
    assert parts.formats[0](row) == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]


def test_a_formats_options_are_checked_with_file_key_and_did_you_mean(write):
    path = write("recipe.yaml", HEAD, """\
        data:
          mixture:
            - source: rows.jsonl
              fraction: 1.0
              format: {name: sharegpt, rolez: {bot: assistant}}
            - source: rows.jsonl
              fraction: 1.0
              format: {name: sharegpt, roles: {bot: robot}, role_key: 3}
            - source: rows.jsonl
              fraction: 1.0
              format: {name: messages, roles: {bot: assistant}}
        """)
    lines = bind_problems(path)
    assert len(lines) == 3, lines
    assert "recipe.yaml: data.mixture[0].format.rolez: unknown option; did you mean 'roles'?" in lines
    assert any(line.startswith("recipe.yaml: data.mixture[1].format.role_key: expected str") for line in lines)
    assert "recipe.yaml: data.mixture[2].format.roles: unknown option" in lines


def test_a_formats_option_values_are_checked_by_its_rules(write):
    path = write("recipe.yaml", HEAD, """\
        data:
          mixture:
            - source: rows.jsonl
              fraction: 1.0
              format: {name: sharegpt, roles: {bot: robot}, role_key: value}
        """)
    lines = bind_problems(path)
    assert lines == ["recipe.yaml: data.mixture[0].format.roles: maps 'bot' to 'robot'; expected one of: system, "
                     "user, assistant, tool",
                     "recipe.yaml: data.mixture[0].format.content_key: is the same key as role_key ('value')"]
