"""Bind every plugin a recipe selects, checking all their options before anything runs; and
`load_and_bind`, which reports every problem of a recipe (the recipe itself, its plugins, its local
paths, the header and first row of its local data) in one pass."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from framework.config import Component, LoadedRecipe
from framework.config.load import read_recipe
from framework.config.paths import check_paths, looks_local
from framework.config.validate import Problems
from framework.data.sources import check_first_row, pick_loader
from framework.errors import UserError
from framework.estimation.sequence_parallel import check_recipe as check_sequence_parallel
from framework.model.tokenizer import is_template_source
from framework.registry.factories import declared
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
    absent: dict[str, str] = field(default_factory=dict)  # key -> line: local paths missing here (`absent_ok`)


def bind_parts(loaded: LoadedRecipe) -> Parts:
    """Load plugins and bind the recipe's selections; raise UserError listing every problem."""
    problems = Problems(loaded.source_of)
    parts = _bind(loaded, problems)
    if problems.lines:
        raise UserError(problems.lines)
    return parts


def load_and_bind(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = (), absent_ok: bool = False
                  ) -> tuple[LoadedRecipe, Parts]:
    """The recipe and its plugins, or a UserError with every problem found in one pass: extends,
    overrides, interpolation, schema, combinations, plugin names, options and option values, local
    paths that do not exist, a split (launch.sequence_parallel) the model, kernel or length cannot take,
    and what each local source's first row says of its columns and format.
    Checks that depend on a wrong key are skipped. `absent_ok`: local paths missing here are not
    problems but `parts.absent` (a plan for the machine that has them)."""
    loaded, problems = read_recipe(path, overrides)
    parts = _bind(loaded, problems)
    check_paths(loaded.recipe, problems)
    check_sequence_parallel(loaded.recipe, problems)  # here, so that train refuses before it launches
    if parts is not None:
        _check_first_rows(loaded, parts, problems)
        _check_objective(loaded, parts, problems)
    if absent_ok and parts is not None:
        parts.absent = problems.absent
        problems.lines = [line for line in problems.lines if line not in problems.absent.values()]
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
    """Each mixture entry's loader and format (with its options); a local source that does not
    exist is a problem."""
    loaders, formats = [], []
    for i, entry in enumerate(entries or []):
        at = f"{key}[{i}]"
        if problems.touches(f"{at}.source", f"{at}.loader", f"{at}.format"):
            loaders.append(None)
            formats.append(None)
            continue
        loader = pick_loader(entry)
        if _names_a_local_path(entry, loader) and not Path(entry.source).expanduser().exists():
            # only its shape (an extension like `qa.cvs`) says it is a file: a hub name could look like it
            hub = f"; a hub dataset of this name needs {at}.loader=hub" if loader is None and not \
                looks_local(entry.source) else ""
            problems.add_absent(f"{at}.source", f"no such file or folder: {entry.source} (relative paths are from the "
                                         f"working directory{hub})")
        elif loader is None:
            problems.add(f"{at}.source", f"cannot tell how to load '{entry.source}' from its name; set {at}.loader")
        found = loader and registry.get("dataset_loaders", loader, problems, f"{at}.loader")
        loaders.append(found and found.factory)
        selected = entry.format if isinstance(entry.format, Component) else Component(entry.format)
        formats.append(registry.bind("dataset_formats", selected, problems, f"{at}.format"))
    return loaders, formats


def _names_a_local_path(entry, loader: str | None) -> bool:
    """A data file by its suffix or shape (auto-picked loader), or a path by its shape; a third-party
    loader's source may be anything else (a URL, a table name)."""
    return (entry.loader == "auto" and loader != "hub") or looks_local(entry.source)


def _check_objective(loaded: LoadedRecipe, parts: Parts, problems: Problems) -> None:
    """What the recipe's objective says it cannot run with (`Objective.recipe_problems`: GRPO refuses
    ZeRO-3, packing, ...), found here so that `check` and `train` refuse before anything launches."""
    if parts.objective is None or problems.touches("objective"):
        return
    for key, message in getattr(parts.objective(), "recipe_problems", lambda _: [])(loaded.recipe):
        if not problems.touches(key):
            problems.add(key, message)


def _check_first_rows(loaded: LoadedRecipe, parts: Parts, problems: Problems) -> None:
    """Each source's first row, as its loader reads it cheaply (`factory.first_row`; none for a hub
    dataset): a missing column or a malformed first row is the problem loading it would stop with."""
    recipe = loaded.recipe
    for key, section, loaders, formats in (("data.mixture", recipe.data, parts.loaders, parts.formats),
                                           ("eval.mixture", recipe.eval, parts.eval_loaders, parts.eval_formats)):
        entries = (section.mixture if section is not None else None) or []  # eval.split: no mixture of its own
        for i, (entry, load, to_messages) in enumerate(zip(entries, loaders, formats)):
            at = f"{key}[{i}]"
            if load is None or to_messages is None or problems.touches(at):
                continue
            try:
                first = declared(load, "first_row", entry.source, entry.split)
                if first is not None:
                    check_first_row(first, at, entry, to_messages)
            except UserError as exc:  # one entry's problems; the others are still read
                problems.lines.extend(exc.problems)
                problems.invalid.add(at)
