"""Bind every plugin a recipe selects, checking all their options before anything runs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from framework.config import LoadedRecipe
from framework.config.validate import Problems
from framework.data.sources import pick_loader
from framework.errors import UserError
from framework.model.tokenizer import is_template_source
from framework.registry.manager import Registry, build_registry


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
    loggers: list[Callable]


def bind_parts(loaded: LoadedRecipe) -> Parts:
    """Load plugins and bind the recipe's selections; raise UserError listing every problem."""
    recipe = loaded.recipe
    registry = build_registry(recipe.plugins, where=loaded.source_of)
    problems = Problems(loaded.source_of)
    loaders, formats = [], []
    for i, entry in enumerate(recipe.data.mixture):
        loader = pick_loader(entry)
        if loader is None:
            problems.add(f"data.mixture[{i}].source", f"cannot tell how to load '{entry.source}'"
                         f" from its name; set data.mixture[{i}].loader")
        found = loader and registry.get("dataset_loaders", loader, problems, f"data.mixture[{i}].loader")
        loaders.append(found and found.factory)
        found = registry.get("dataset_formats", entry.format, problems, f"data.mixture[{i}].format")
        formats.append(found and found.factory)
    template = recipe.tokenizer.chat_template
    if template and not is_template_source(template):
        registry.get("chat_templates", template, problems, "tokenizer.chat_template")
    bind = registry.bind
    parts = Parts(
        registry, loaders, formats,
        truncation=bind("truncation", recipe.data.truncation, problems, "data.truncation"),
        packing=bind("packing", recipe.data.packing, problems, "data.packing"),
        optimizer=bind("optimizers", recipe.optimizer, problems, "optimizer"),
        scheduler=bind("schedulers", recipe.scheduler, problems, "scheduler"),
        loggers=[bind("loggers", c, problems, f"logging.loggers[{i}]")
                 for i, c in enumerate(recipe.logging.loggers)],
    )
    if problems.lines:
        raise UserError(problems.lines)
    return parts
