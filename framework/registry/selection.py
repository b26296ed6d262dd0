"""Bind every plugin a recipe selects, checking all their options before anything runs; and
`load_and_bind`, which reports every problem of a recipe (the recipe itself, its plugins, its local
paths) in one pass."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from framework.config import LoadedRecipe
from framework.config.load import read_recipe
from framework.config.paths import check_paths, looks_local
from framework.config.validate import Problems
from framework.data.sources import pick_loader
from framework.errors import UserError
from framework.model.tokenizer import is_template_source
from framework.registry.manager import Registry, build_registry

UNBOUND = "; plugin names and options are not checked until it is fixed"


@dataclass
class Parts:
    """The recipe's plugins, each a factory with the recipe's options already applied."""

    registry: Registry
    loaders: list[Callable]
    formats: list[Callable]
    truncation: Callable
    packing: Callable
    optimizer: Callable
    scheduler: Callable
    loss: Callable
    loggers: list[Callable]
    objective: Callable
    eval_loaders: list[Callable]  # eval.mixture's, as loaders/formats are data.mixture's
    eval_formats: list[Callable]


def bind_parts(loaded: LoadedRecipe) -> Parts:
    """Load plugins and bind the recipe's selections; raise UserError listing every problem."""
    problems = Problems(loaded.source_of)
    parts = _bind(loaded, problems)
    if problems.lines:
        raise UserError(problems.lines)
    return parts


def load_and_bind(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()
                  ) -> tuple[LoadedRecipe, Parts]:
    """The recipe and its plugins, or a UserError with every problem found in one pass: extends,
    overrides, interpolation, schema, combinations, plugin names, options and option values, and
    local paths that do not exist. Checks that depend on a wrong key are skipped."""
    loaded, problems = read_recipe(path, overrides)
    parts = _bind(loaded, problems)
    check_paths(loaded.recipe, problems)
    if problems.lines:
        raise UserError(problems.lines)
    return loaded, parts


def _bind(loaded: LoadedRecipe, problems: Problems) -> Optional[Parts]:
    recipe = loaded.recipe
    try:
        registry = build_registry(recipe.plugins, where=loaded.source_of)
    except UserError as exc:  # a plugin module of the recipe: what it registers is unknown
        problems.lines.extend(line + UNBOUND for line in exc.problems)
        return None
    loaders, formats = _sources(recipe.data.mixture if recipe.data is not None else [], "data.mixture", registry,
                                problems)
    eval_loaders, eval_formats = _sources(recipe.eval.mixture if recipe.eval is not None else [], "eval.mixture",
                                          registry, problems)
    template = recipe.tokenizer.chat_template
    if template and not is_template_source(template) and not problems.touches("tokenizer.chat_template"):
        registry.get("chat_templates", template, problems, "tokenizer.chat_template")

    def bind(family: str, component, path: str) -> Optional[Callable]:
        return None if problems.touches(path) else registry.bind(family, component, problems, path)

    return Parts(registry, loaders, formats,
                 truncation=bind("truncation", recipe.data and recipe.data.truncation, "data.truncation"),
                 packing=bind("packing", recipe.data and recipe.data.packing, "data.packing"),
                 optimizer=bind("optimizers", recipe.optimizer, "optimizer"),
                 scheduler=bind("schedulers", recipe.scheduler, "scheduler"),
                 loss=bind("losses", recipe.train and recipe.train.loss, "train.loss"),
                 loggers=[bind("loggers", c, f"logging.loggers[{i}]") for i, c in enumerate(recipe.logging.loggers)],
                 objective=bind("objectives", recipe.objective, "objective"),
                 eval_loaders=eval_loaders, eval_formats=eval_formats)


def _sources(entries, key: str, registry: Registry, problems: Problems) -> tuple[list, list]:
    """Each mixture entry's loader and format; a local source that does not exist is a problem."""
    loaders, formats = [], []
    for i, entry in enumerate(entries or []):
        at = f"{key}[{i}]"
        if problems.touches(f"{at}.source", f"{at}.loader", f"{at}.format"):
            loaders.append(None)
            formats.append(None)
            continue
        loader = pick_loader(entry)
        if loader is None:
            problems.add(f"{at}.source", f"cannot tell how to load '{entry.source}' from its name; set {at}.loader")
        elif _names_a_local_path(entry, loader) and not Path(entry.source).expanduser().exists():
            problems.add(f"{at}.source", f"no such file or folder: {entry.source} (relative paths are from the "
                                         "working directory)")
        found = loader and registry.get("dataset_loaders", loader, problems, f"{at}.loader")
        loaders.append(found and found.factory)
        found = registry.get("dataset_formats", entry.format, problems, f"{at}.format")
        formats.append(found and found.factory)
    return loaders, formats


def _names_a_local_path(entry, loader: str) -> bool:
    """A data file by its suffix (auto-picked loader), or a path by its shape; a third-party loader's
    source may be anything else (a URL, a table name)."""
    return (entry.loader == "auto" and loader != "hub") or looks_local(entry.source)
