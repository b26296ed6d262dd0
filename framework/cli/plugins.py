"""`seqtune plugins`: every registered name, its family, plugin and distribution."""
from __future__ import annotations

from typing import Optional

import typer

from framework.cli.common import console, show_warnings, user_errors


@user_errors
def plugins(recipe: Optional[str] = typer.Argument(
        None, help="Also load the plugin modules this recipe names in `plugins:`.")) -> None:
    """List the dataset loaders, formats, strategies, optimizers, schedulers and loggers available."""
    from rich.table import Table

    from framework.registry import FAMILIES, build_registry

    if recipe:
        from framework.config import load_recipe

        loaded = load_recipe(recipe)
        registry = build_registry(loaded.recipe.plugins, where=loaded.source_of)
    else:
        registry = build_registry()
    show_warnings(registry.warnings)
    table = Table(title="seqtune plugins")
    for column in ("family", "name", "plugin", "distribution"):
        table.add_column(column)
    for entry in registry.all_entries():
        table.add_row(FAMILIES[entry.family][1], entry.name, entry.plugin, entry.distribution)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins)
