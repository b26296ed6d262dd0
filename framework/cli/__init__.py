"""The `seqtune` command line: one Typer command per module, errors as bullet lines (exit 2).

Only the command that runs imports torch/transformers, so `--help`, `plugins` and `check` on a
bad recipe answer at once.
"""
from __future__ import annotations

import os
from typing import Optional

import typer

from framework.cli import check, importer, plan, plugins, report, train
from framework.cli.common import console

app = typer.Typer(name="seqtune", no_args_is_help=True, add_completion=True,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Fine-tune causal language models from declarative YAML recipes.")
for module in (train, check, plan, report, importer, plugins):
    module.register(app)


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


def main() -> None:
    app()


__all__ = ["app", "console", "main"]
