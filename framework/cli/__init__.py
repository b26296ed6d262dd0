"""The `seqtune` command line: one Typer command per module, an error as one line (several as bullet
lines), exit 2.

Only the command that runs imports torch/transformers, so `--help`, `plugins` and `check` on a
bad recipe answer at once.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import typer

from framework.cli import check, importer, plan, plugins, report, train
from framework.cli.common import console, style_help

app = typer.Typer(name="seqtune", no_args_is_help=True, add_completion=True,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Fine-tune causal language models from declarative YAML recipes.")
for module in (train, check, plan, report, importer, plugins):
    module.register(app)
style_help(app)


@app.callback()
def options(block_plugin: Optional[list[str]] = typer.Option(
        None, "--block-plugin", metavar="NAME",
        help="Skip the plugin NAME (as `seqtune plugins` lists it); repeatable. Same as "
             "SEQTUNE_BLOCK_PLUGINS=NAME,...; SEQTUNE_DISABLE_PLUGIN_AUTOLOAD=1 skips every third-party plugin.")
            ) -> None:
    """Fine-tune causal language models from declarative YAML recipes."""
    if block_plugin:  # through the environment, so launched workers block them too
        from framework.registry.manager import BLOCK_ENV, blocked_plugins

        os.environ[BLOCK_ENV] = ",".join([*blocked_plugins(), *block_plugin])


class _NotDeepSpeedsDevice(logging.Filter):
    """accelerate imports DeepSpeed whenever it unwraps a model (to test for its engine), in runs without
    DeepSpeed too, and DeepSpeed then logs, on stdout, that it found no GPU. seqtune's own DeepSpeed runs
    on the CPU name the device (DS_ACCELERATOR=cpu, set by the launcher), and on a GPU the line never
    shows: it only ever tells a run that does not use DeepSpeed about DeepSpeed."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Setting accelerator to CPU")


logging.getLogger("DeepSpeed").addFilter(_NotDeepSpeedsDevice())  # its logger's name; no import needed


def main() -> None:
    app()


__all__ = ["app", "console", "main"]
