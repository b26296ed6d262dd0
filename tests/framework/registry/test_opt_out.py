"""Loading third-party plugins safely: a broken entry point is skipped with one line naming its
distribution, SEQTUNE_DISABLE_PLUGIN_AUTOLOAD=1 loads none, and a plugin can be blocked by name
(SEQTUNE_BLOCK_PLUGINS, or `seqtune --block-plugin NAME`)."""
from __future__ import annotations

import pytest

from framework.config.schema import Component
from framework.config.validate import Problems
from framework.registry import build_registry

GOOD = """\
from framework import hookimpl

@hookimpl
def seqtune_register_truncation():
    return {"keep_all": lambda input_ids, labels, max_seq_length: (input_ids, labels)}
"""
BROKEN_IMPORT = """\
import a_module_that_is_not_installed
"""
BAD_SIGNATURE = """\
from framework import hookimpl

@hookimpl
def seqtune_log(step, metric):
    pass
"""
TYPO = """\
from framework import hookimpl

@hookimpl
def seqtune_train_started(run):
    pass
"""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):
    for name in ("SEQTUNE_DISABLE_PLUGIN_AUTOLOAD", "SEQTUNE_BLOCK_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_an_entry_point_that_fails_to_import_is_skipped_with_one_line(env, distribution):
    distribution("seqtune_good", "seqtune_good", GOOD, entry_name="good")
    distribution("seqtune_broken", "seqtune_broken", BROKEN_IMPORT, entry_name="broken")
    registry = build_registry()
    assert "keep_all" in registry.entries["truncation"]  # the healthy third party still loads
    assert "adamw" in registry.entries["optimizers"]  # and the built-ins
    (line,) = registry.warnings
    assert "\n" not in line
    assert "'broken'" in line and "seqtune_broken" in line and "ModuleNotFoundError" in line
    assert "SEQTUNE_BLOCK_PLUGINS=broken" in line


def test_an_entry_point_whose_hooks_break_the_contract_is_skipped(env, distribution):
    distribution("seqtune_badsig", "seqtune_badsig", BAD_SIGNATURE, entry_name="badsig")
    registry = build_registry()
    (line,) = registry.warnings
    assert "'badsig'" in line and "seqtune_badsig" in line and "metric" in line
    assert "badsig" not in {impl.plugin_name for impl in registry.pm.hook.seqtune_log.get_hookimpls()}


def test_an_unknown_name_says_that_plugins_were_skipped(env, distribution):
    distribution("seqtune_broken2", "seqtune_broken2", BROKEN_IMPORT, entry_name="broken2")
    registry = build_registry()
    problems = Problems(lambda key: "recipe.yaml")
    registry.bind("truncation", Component("keep_all"), problems, "data.truncation")
    (line,) = problems.lines
    assert "unknown truncation strategy 'keep_all'" in line and "1 third-party plugin(s) were skipped" in line


def test_autoload_can_be_disabled(env, distribution):
    distribution("seqtune_good2", "seqtune_good2", GOOD, entry_name="good2")
    env.setenv("SEQTUNE_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry = build_registry()
    assert "keep_all" not in registry.entries["truncation"] and "right" in registry.entries["truncation"]
    assert registry.warnings == []


def test_a_plugin_is_blocked_by_name(env, distribution):
    distribution("seqtune_good3", "seqtune_good3", GOOD, entry_name="good3")
    distribution("seqtune_broken3", "seqtune_broken3", BROKEN_IMPORT, entry_name="broken3")
    env.setenv("SEQTUNE_BLOCK_PLUGINS", "broken3, plugins.trackers")
    registry = build_registry()
    assert registry.warnings == []  # the broken one was never imported
    assert "keep_all" in registry.entries["truncation"]
    assert "wandb" not in registry.entries["loggers"] and "rich" in registry.entries["loggers"]  # a built-in too


def test_the_cli_option_blocks_a_plugin_that_would_stop_every_command(env, distribution, tmp_path, seqtune):
    distribution("seqtune_typo", "seqtune_typo", TYPO, entry_name="typo")
    env.setenv("PYTHONPATH", str(tmp_path))  # the dist-info and its module, for the subprocess
    stopped = seqtune("plugins")
    assert stopped.returncode == 2
    assert "did you mean 'seqtune_train_start'?" in stopped.stderr and "SEQTUNE_BLOCK_PLUGINS=typo" in stopped.stderr
    blocked = seqtune("--block-plugin", "typo", "plugins")
    assert blocked.returncode == 0, blocked.stderr
    assert "adamw" in blocked.stdout and "Traceback" not in blocked.stderr


def test_the_cli_lists_plugins_and_warns_about_a_broken_one(env, distribution, tmp_path, seqtune):
    distribution("seqtune_broken4", "seqtune_broken4", BROKEN_IMPORT, entry_name="broken4")
    env.setenv("PYTHONPATH", str(tmp_path))
    result = seqtune("plugins")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "seqtune_broken4" in warnings[0]
    assert "adamw" in result.stdout
