"""`seqtune train`: run a recipe to a Hugging Face checkpoint."""
from __future__ import annotations

from typing import Optional

import typer

from framework.cli.common import OVERRIDES_HELP, RECIPE_HELP, console, show_warnings, user_errors


@user_errors
def train(recipe: str = typer.Argument(..., help=RECIPE_HELP),
          overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
          overwrite: bool = typer.Option(False, "--overwrite",
                                         help="Replace what output_dir holds (another run, other files) "
                                              "instead of refusing; the same as overwrite_output_dir=true."),
          print_launch: bool = typer.Option(False, "--print-launch",
                                            help="Print the command each machine must run, and exit.")) -> None:
    """Train a model from a recipe and save it to the recipe's output_dir."""
    from framework.launch.launcher import is_worker, launch, needs_launch, print_commands
    from framework.registry import load_and_bind

    # An override, not a flag passed on: launched workers re-run this command line with the overrides.
    overrides = [*(overrides or []), *(["overwrite_output_dir=true"] if overwrite else [])]
    loaded, parts = load_and_bind(recipe, overrides)  # every recipe problem, in one pass
    if print_launch:
        for line in print_commands(loaded.recipe, recipe, overrides):
            console.print(line, highlight=False, soft_wrap=True, markup=False)
        return
    if needs_launch(loaded.recipe):
        _check_before_launch(loaded, parts)
        code = launch(loaded.recipe, recipe, overrides)
        if code:
            raise typer.Exit(code)
        console.print(f"[green]done[/]: model saved to {loaded.recipe.output_dir}")
        return
    from framework.training.loop import train as run  # torch and transformers load only now

    output_dir = run(loaded)
    if not is_worker():  # a launched run says it once, from the launcher
        console.print(f"[green]done[/]: model saved to {output_dir}")


def _check_before_launch(loaded, parts) -> None:
    """Plugin warnings and machine errors show once, here, not once per worker."""
    from framework.launch.preflight import preflight

    show_warnings(parts.registry.warnings)
    preflight(loaded.recipe)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
