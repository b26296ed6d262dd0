"""`seqtune import open-instruct`: an open-instruct command (after `--`, or a shell script) as a recipe."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from framework.cli.common import console, show_warnings, user_errors

importer = typer.Typer(help="Write a recipe from another tool's training command.", no_args_is_help=True)


@importer.command("open-instruct", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def open_instruct(words: Optional[list[str]] = typer.Argument(
                      None, help="The command after `--`: accelerate launch ... open_instruct/finetune.py ..."),
                  script: Optional[Path] = typer.Option(None, "--script", help="A shell script holding the command "
                                                        "(line continuations, VAR=value lines and $VARS expanded)."),
                  output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the recipe here "
                                                        "(default: print it).")) -> None:
    """Turn an open-instruct finetune.py / dpo_tune_cache.py command into a recipe, every key commented
    with the flag it came from; flags seqtune does not carry over are listed at its top and here."""
    from framework.errors import UserError
    from framework.importers.commands import parse_command, words_of_script
    from framework.importers.open_instruct import SCRIPTS, read, render

    if (script is None) == (not words):
        raise UserError("give the command after `--`, or --script FILE, not both")
    if script is not None:
        if not script.is_file():
            raise UserError(f"{script}: no such file")
        words = words_of_script(script.read_text(), str(script))
    command = parse_command(list(words), SCRIPTS)
    draft = read(command)
    text = render(draft, command, str(output) if output else "recipe.yaml")
    show_warnings(draft.warnings)
    if output is None:
        typer.echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    console.print(f"wrote {output}: check it with `seqtune check {output}`")


def register(app: typer.Typer) -> None:
    app.add_typer(importer, name="import")
