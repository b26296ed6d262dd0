"""The `seqtune` command line: one Typer command per module, errors as bullet lines (exit 2).

Only the command that runs imports torch/transformers, so `--help`, `plugins` and `check` on a
bad recipe answer at once.
"""
from __future__ import annotations

import typer

from framework.cli import check, plan, plugins, train
from framework.cli.common import console

app = typer.Typer(name="seqtune", no_args_is_help=True, add_completion=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Fine-tune causal language models from declarative YAML recipes.")
for module in (train, check, plan, plugins):
    module.register(app)


def main() -> None:
    app()


__all__ = ["app", "console", "main"]
