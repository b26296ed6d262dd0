"""`seqtune check`: validate a recipe without training and show it resolved."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

import typer

from framework.cli.common import OVERRIDES_HELP, RECIPE_HELP, console, user_errors
from framework.config.schema import Component


@user_errors
def check(recipe: str = typer.Argument(..., help=RECIPE_HELP),
          overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP)) -> None:
    """Validate a recipe and its plugin options; print the resolved recipe (exit 0) or the errors (exit 2)."""
    from framework.components import bind_parts
    from framework.config import load_recipe

    loaded = load_recipe(recipe, overrides or [])
    bind_parts(loaded)
    console.print(recipe_tree(loaded))
    console.print(f"[green]ok[/]: {loaded.path} is a valid recipe")


def recipe_tree(loaded: Any):
    """The resolved recipe as a tree; each value says whether a file, an override or a default set it."""
    from rich.tree import Tree

    tree = Tree(f"[bold]{loaded.path}[/]")
    _add(tree, loaded.recipe, "", loaded.provenance)
    return tree


def _add(node: Any, value: Any, path: str, provenance: dict[str, str]) -> None:
    if dataclasses.is_dataclass(value) and not isinstance(value, Component):
        for f in dataclasses.fields(value):
            _add_child(node, f.name, getattr(value, f.name), f"{path}.{f.name}".lstrip("."), provenance)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _add_child(node, f"[{i}]", item, f"{path}[{i}]", provenance)


def _add_child(node: Any, label: str, value: Any, path: str, provenance: dict[str, str]) -> None:
    from rich.markup import escape

    source = provenance.get(path)
    tag = f"  [dim]({escape(source)})[/]" if source else "  [dim italic](default)[/]"
    if isinstance(value, Component):
        options = ", ".join(f"{k}={json.dumps(v)}" for k, v in value.options.items())
        node.add(f"{label}: [cyan]{escape(value.name)}[/]{escape(f' ({options})') if options else ''}{tag}")
    elif dataclasses.is_dataclass(value) or (isinstance(value, list) and value and not
                                             isinstance(value[0], (str, int, float))):
        _add(node.add(f"[bold]{label}[/]{tag if source else ''}"), value, path, provenance)
    else:
        node.add(f"{label}: [cyan]{escape(json.dumps(value))}[/]{tag}")  # YAML-like: null, true


def register(app: typer.Typer) -> None:
    app.command("check")(check)
