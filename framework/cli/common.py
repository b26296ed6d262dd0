"""What the CLI commands share: the consoles, the user-error boundary, and how `--help` reads."""
from __future__ import annotations

import functools
from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from framework.errors import RunStopped, UserError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
# One message, one line where a program or a log file reads it (grep finds a whole problem); in a
# terminal, rich wraps at word boundaries instead of the terminal cutting words at its edge.
err_console.soft_wrap = not err_console.is_terminal

RECIPE_HELP = "Recipe YAML file."
OVERRIDES_HELP = "Overrides as key=value, e.g. train.max_steps=10 data.max_seq_length=1024."


def _gpus() -> str:
    from framework.estimation.hardware import GPUS  # pure Python: the CLI stays light

    return ", ".join(GPUS)


GPU_HELP = f"Plan memory for this GPU: {_gpus()}, or its memory in GiB."


def print_line(text: str, **options: Any) -> None:
    """One line on stdout: whole in a pipe or a file, wrapped at words in a terminal."""
    console.print(text, soft_wrap=not console.is_terminal, **{"highlight": False, **options})


def show_warnings(lines: list[str]) -> None:
    """One line each, on stderr: the command goes on, but the user should know."""
    for line in lines:
        err_console.print(f"[bold yellow]warning[/]: {escape(line)}")


def user_errors(command: Callable) -> Callable:
    """Show a UserError as one line (several problems: a count and bullet lines) and exit 2, a
    stopped run as one line with its own exit code: neither prints a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            show_problems(exc.problems)
            raise typer.Exit(2) from None
        except RunStopped as exc:
            err_console.print(f"[bold yellow]stopped[/]: {escape(str(exc))}")
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def show_problems(problems: list[str]) -> None:
    if len(problems) == 1:
        err_console.print(f"[bold red]error[/]: {escape(problems[0])}")
        return
    err_console.print(f"[bold red]error[/]: {len(problems)} problems:")
    for line in problems:
        err_console.print(f"  [red]•[/] {escape(line)}")


# --- --help ---------------------------------------------------------------------------------------
# Typer shows each value's Python type (`<str>`, `<bool>`, `<list[str]>`); seqtune's help names the
# value instead, as its text does (RECIPE, N, PATH), and shows nothing for a flag.

class _Argument(TyperArgument):
    @property
    def display_name_raw(self) -> str:
        return self.metavar or (self.name or "").upper()

    def display_type_rich(self, ctx: Any) -> None:
        return None

    def _usage_display_name(self) -> str:
        name = self.display_name_raw + ("..." if self.nargs != 1 else "")
        return name if self.required else f"[{name}]"


class _Option(TyperOption):
    def display_type_rich(self, ctx: Any) -> str | None:
        if self.is_flag or self.count:
            return None
        return self.metavar or (self.name or "").upper()


def _named(params: list) -> list:
    """The parameters, each shown by its name rather than its type (a subclass adding only that)."""
    for param in params:
        if type(param) is TyperArgument:
            param.__class__ = _Argument
        elif type(param) is TyperOption:
            param.__class__ = _Option
    return params


class HelpCommand(TyperCommand):
    def get_params(self, ctx: Any) -> list:
        return _named(super().get_params(ctx))


class HelpGroup(TyperGroup):
    def get_params(self, ctx: Any) -> list:
        return _named(super().get_params(ctx))


def style_help(app: typer.Typer) -> None:
    """Every command and group of `app` (and of its sub-apps) shows values by name; markdown markup
    joins a docstring's lines into whole sentences in the command list and keeps `[plot]` as text
    (rich markup would take it for a style and drop it)."""
    app.rich_markup_mode = "markdown"
    app.info.cls = HelpGroup
    for command in app.registered_commands:
        if command.cls in (None, TyperCommand):  # not a command class of its own
            command.cls = HelpCommand
    for group in app.registered_groups:
        group.cls = HelpGroup
        style_help(group.typer_instance)
