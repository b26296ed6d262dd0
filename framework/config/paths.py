"""Recipe keys that name local paths: a path that does not exist is a recipe problem, found before
anything runs. A name that could be a hub id (`name`, `org/name`) is left to the loader."""
from __future__ import annotations

import json
from pathlib import Path

from framework.config.schema import Recipe
from framework.config.validate import Problems


def looks_local(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else is meant as a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def check_paths(recipe: Recipe, problems: Problems) -> None:
    """Add a problem for every local path the recipe names that does not exist (keys that already
    have a problem are skipped)."""
    wanted = [("model.name_or_path", recipe.model.name_or_path, "directory", looks_local),
              ("tokenizer.name_or_path", recipe.tokenizer.name_or_path, "directory", looks_local),
              ("tokenizer.chat_template", recipe.tokenizer.chat_template, "file", _is_template_file),
              ("checkpoint.resume", recipe.checkpoint.resume, "checkpoint folder", _is_resume_path)]
    if recipe.launch.deepspeed is not None:
        wanted.append(("launch.deepspeed.config_file", recipe.launch.deepspeed.config_file, "file", bool))
    for key, value, what, is_path in wanted:
        if value and not problems.touches(key) and is_path(value) and not Path(value).expanduser().exists():
            problems.add_absent(key, f"no such {what}: {value} (relative paths are from the working directory)")
    _check_custom_code(recipe, problems)


def _check_custom_code(recipe: Recipe, problems: Problems) -> None:
    """A local model whose config.json maps to its own code runs only with trust_remote_code."""
    name = recipe.model.name_or_path
    config = Path(name).expanduser() / "config.json" if name else None
    if config is None or recipe.model.trust_remote_code or not config.is_file():
        return
    try:
        custom = "auto_map" in json.loads(config.read_text())
    except (OSError, ValueError):
        return  # an unreadable config is the model loader's error to report
    if custom:
        problems.add("model.name_or_path", f"{name} holds custom model code (auto_map in config.json), which runs "
                                           "only with model.trust_remote_code=true: set it if you trust that code")


def _is_template_file(value: str) -> bool:
    from framework.model.tokenizer import is_jinja

    return value.endswith(".jinja") and not is_jinja(value)


def _is_resume_path(value: str) -> bool:
    return value not in ("auto", "never")
