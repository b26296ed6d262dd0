"""Shared fixtures for the built-in plugin tests: a tiny run and a real hook relay for loggers."""
from __future__ import annotations

from pathlib import Path

import pluggy
import pytest

from framework import hookspecs
from framework.types import RunInfo


@pytest.fixture
def run_info(tmp_path: Path) -> RunInfo:
    return RunInfo(run_name="tiny-run", output_dir=str(tmp_path / "out"), recipe={"seed": 1, "lr": 0.5},
                   total_steps=4, steps_per_epoch=2, num_rows=8, num_parameters=1234)


@pytest.fixture
def hooks():
    """hooks(*loggers) -> the hook relay with the loggers registered, as the engine does it.

    Registering checks each logger's hookimpls against the specs (names and argument names).
    """

    def _hooks(*loggers):
        pm = pluggy.PluginManager("seqtune")
        pm.add_hookspecs(hookspecs)
        for logger in loggers:
            pm.register(logger)
        return pm.hook

    return _hooks
