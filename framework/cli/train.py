"""`seqtune train`: run a recipe to a Hugging Face checkpoint."""
from __future__ import annotations

from typing import Optional

import typer

from framework.cli.common import OVERRIDES_HELP, RECIPE_HELP, console, user_errors


@user_errors
def train(recipe: str = typer.Argument(..., help=RECIPE_HELP),
          overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP)) -> None:
    """Train a model from a recipe and save it to the recipe's output_dir."""
    from framework.config import load_recipe

    loaded = load_recipe(recipe, overrides or [])
    from framework.engine import train as run  # torch and transformers load only now

    output_dir = run(loaded)
    console.print(f"[green]done[/]: model saved to {output_dir}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
