"""Load a recipe: YAML files joined by `extends:`, `key=value` overrides, `${...}` interpolation.

Every leaf remembers which file (or override) set it, so an error can name its source and
`seqtune check` can show where each value came from.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from framework.config.checks import check_combinations
from framework.config.schema import Recipe
from framework.config.validate import UNRESOLVED, Problems, convert
from framework.errors import UserError

@dataclass
class LoadedRecipe:
    recipe: Recipe
    data: dict[str, Any]  # the resolved recipe as plain data (what gets saved with the model)
    provenance: dict[str, str]  # key path -> file or override that set it
    path: str

    def source_of(self, key_path: str) -> str:
        """The file or override that set `key_path`, or its nearest parent (for missing keys)."""
        return _source(self.provenance, key_path, self.path)


def display_path(path: str | os.PathLike) -> str:
    """A path as the user should read it: relative to the working directory when inside it."""
    rel = os.path.relpath(os.path.abspath(path))
    return str(path) if rel.startswith("..") else rel


def load_recipe(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> LoadedRecipe:
    """Load, merge, resolve and validate a recipe; raise UserError listing every problem."""
    loaded, problems = read_recipe(path, overrides)
    if problems.lines:
        raise UserError(problems.lines)
    return loaded


def read_recipe(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()
                ) -> tuple[LoadedRecipe, Problems]:
    """The recipe as far as it can be read, and every problem found on the way, in one pass:
    `extends`, overrides, interpolation, the schema and impossible combinations. Wrong keys keep
    their defaults (listed in `problems.invalid`), so callers can check plugins and paths too.
    Only an unreadable recipe file itself stops here (UserError): there is nothing else to read."""
    provenance: dict[str, str] = {}
    top = display_path(path)
    problems = Problems(lambda key: _source(provenance, key, top))
    cfg = _load_with_extends(Path(path), provenance, (), problems)
    for override in overrides:
        try:
            _apply_override(cfg, override, provenance)
        except UserError as exc:
            problems.lines.extend(exc.problems)
    data = _resolved(cfg, "", problems)
    recipe = convert(Recipe, data, problems)
    if problems.check_required:  # else a parent file is unreadable: what is missing may be in it
        check_combinations(recipe, problems)
    return LoadedRecipe(recipe, data, provenance, top), problems


def _resolved(node: Any, path: str, problems: Problems) -> Any:
    """Plain data with every ${...} resolved; a key that cannot be is reported and left UNRESOLVED."""
    if isinstance(node, DictConfig):
        return {key: _resolved_child(node, key, f"{path}.{key}" if path else str(key), problems)
                for key in node.keys()}
    return [_resolved_child(node, i, f"{path}[{i}]", problems) for i in range(len(node))]


def _resolved_child(node: Any, key: Any, path: str, problems: Problems) -> Any:
    try:
        if OmegaConf.is_missing(node, key):
            problems.add(path, "missing value (???); set it in the recipe or as an override")
            return UNRESOLVED
        value = node[key]
    except OmegaConfBaseException as exc:
        problems.add(path, f"cannot resolve interpolation: {str(exc).splitlines()[0]}")
        return UNRESOLVED
    return _resolved(value, path, problems) if isinstance(value, (DictConfig, ListConfig)) else value


def _source(provenance: dict[str, str], key: str, top: str) -> str:
    """The source of `key`, or of its nearest parent that has one (for missing keys)."""
    while key:
        if key in provenance:
            return provenance[key]
        key = key[: max(key.rfind("."), key.rfind("["), 0)]
    return top


def _read_yaml(path: Path) -> DictConfig:
    shown = display_path(path)
    if not path.is_file():
        raise UserError(f"{shown}: no such recipe file")
    try:
        cfg = OmegaConf.load(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{shown}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except OmegaConfBaseException as exc:  # e.g. a malformed ${...} interpolation
        key = getattr(exc, "full_key", None) or "<recipe>"
        raise UserError(f"{shown}: {key}: {str(exc).splitlines()[0]}") from None
    if not isinstance(cfg, DictConfig):
        raise UserError(f"{shown}: a recipe must be a mapping of keys, not a list")
    return cfg


UNCHECKED = "; required keys and combinations are not checked until it is fixed (it may set them)"


def _load_with_extends(path: Path, provenance: dict[str, str], chain: tuple[Path, ...],
                       problems: Problems) -> DictConfig:
    """Merge a file over the files it extends (in order); later files win, lists are replaced. A
    parent that cannot be read is a problem, and its keys are missing: required keys go unchecked."""
    cfg = _read_yaml(path)
    parents = cfg.pop("extends", None)
    parents = [parents] if isinstance(parents, str) else parents or []
    merged = OmegaConf.create({})
    if not isinstance(parents, (list, ListConfig)) or not all(isinstance(p, str) for p in parents):
        _unreadable(problems, f"{display_path(path)}: extends: expected a file path or a list of paths")
        parents = []
    for parent in parents:
        parent_path = path.parent / str(parent)
        if parent_path.resolve() in (*chain, path.resolve()):
            cycle = " -> ".join(display_path(p) for p in (*chain, path.resolve(), parent_path.resolve()))
            _unreadable(problems, f"{display_path(path)}: extends: circular extends: {cycle}")
        elif not parent_path.is_file():
            _unreadable(problems, f"{display_path(path)}: extends: no such file '{parent}' "
                                  "(paths are relative to the extending file)")
        else:
            try:
                loaded = _load_with_extends(parent_path, provenance, (*chain, path.resolve()), problems)
            except UserError as exc:  # the parent's YAML
                _unreadable(problems, exc.problems[0])
                continue
            merged = OmegaConf.merge(merged, loaded)
    _record(OmegaConf.to_container(cfg, resolve=False), "", display_path(path), provenance)
    return OmegaConf.merge(merged, cfg)


def _unreadable(problems: Problems, line: str) -> None:
    problems.lines.append(line + UNCHECKED)
    problems.check_required = False


def _apply_override(cfg: DictConfig, override: str, provenance: dict[str, str]) -> None:
    """Set one `key=value` (the value read as YAML); a mapping value replaces, it does not merge."""
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"override '{override}': expected key=value, e.g. train.max_steps=10")
    source = f"override {override}"
    try:
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]))["v"]
        _name_to_component(cfg, key)
        OmegaConf.update(cfg, key, value, merge=False)
    except (OmegaConfBaseException, yaml.YAMLError, TypeError, ValueError) as exc:
        raise UserError(f"override '{override}': {str(exc).splitlines()[0]}") from None
    for parent in _parents(key):  # keys that the override itself created
        provenance.setdefault(parent, source)
    _record(value, key, source, provenance, replace=True)


def _parents(key: str) -> list[str]:
    cuts = [i for i, ch in enumerate(key) if ch in ".["]
    return [key[:i] for i in cuts if i]


def _name_to_component(cfg: DictConfig, key: str) -> None:
    """`optimizer.lr=0.1` on `optimizer: adamw` means `{name: adamw, lr: 0.1}`, not losing the name."""
    for parent in _parents(key):
        node = OmegaConf.select(cfg, parent, default=None, throw_on_missing=False)
        if isinstance(node, str):
            OmegaConf.update(cfg, parent, {"name": node}, merge=False)


def _record(value: Any, path: str, source: str, provenance: dict[str, str], replace: bool = False) -> None:
    """Mark `path` and every leaf under it as set by `source`, forgetting replaced children."""
    if path:
        if replace or not isinstance(value, dict):  # file mappings merge; the rest replaces
            for stale in [k for k in provenance if k.startswith((path + ".", path + "["))]:
                del provenance[stale]
        provenance[path] = source
    if isinstance(value, dict):
        for key, sub in value.items():
            _record(sub, f"{path}.{key}" if path else str(key), source, provenance)
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            _record(sub, f"{path}[{i}]", source, provenance)
