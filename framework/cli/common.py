"""What the CLI commands share: the consoles and the user-error boundary."""
from __future__ import annotations

import functools
from typing import Callable

import typer
from rich.console import Console
from rich.markup import escape

from framework.errors import RunStopped, UserError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)  # one problem, one line

RECIPE_HELP = "Recipe YAML file."
OVERRIDES_HELP = "Overrides as key=value, e.g. train.max_steps=10 data.max_seq_length=1024."


def _gpus() -> str:
    from framework.estimation.hardware import GPUS  # pure Python: the CLI stays light

    return ", ".join(GPUS)


GPU_HELP = f"Plan memory for this GPU: {_gpus()}, or its memory in GiB."


def show_warnings(lines: list[str]) -> None:
    """One line each, on stderr: the command goes on, but the user should know."""
    for line in lines:
        err_console.print(f"[bold yellow]warning[/]: {escape(line)}")


def user_errors(command: Callable) -> Callable:
    """Show a UserError as bullet lines and exit 2, a stopped run as one line with its own exit
    code: neither prints a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            noun = "problem" if len(exc.problems) == 1 else f"{len(exc.problems)} problems"
            err_console.print(f"[bold red]error[/]: {noun}:")
            for line in exc.problems:
                err_console.print(f"  [red]•[/] {escape(line)}")
            raise typer.Exit(2) from None
        except RunStopped as exc:
            err_console.print(f"[bold yellow]stopped[/]: {escape(str(exc))}")
            raise typer.Exit(exc.exit_code) from None

    return wrapper
