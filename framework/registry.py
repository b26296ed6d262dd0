"""The plugin manager: collects every plugin's registrations and binds recipe selections.

Built-ins come from `plugins.BUILTIN`, third-party packages from the `seqtune` entry-point group,
and a recipe's `plugins:` list from dotted module paths, in that order.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import typing
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import pluggy

from framework import hookspecs
from framework.config.schema import Component
from framework.config.validate import Problems, convert, is_invalid
from framework.errors import UserError, did_you_mean

ENTRY_POINT_GROUP = "seqtune"
FAMILIES = {  # family -> (registration hook, what the recipe calls one)
    "dataset_loaders": ("seqtune_register_dataset_loaders", "dataset loader"),
    "dataset_formats": ("seqtune_register_dataset_formats", "dataset format"),
    "chat_templates": ("seqtune_register_chat_templates", "chat template"),
    "truncation": ("seqtune_register_truncation", "truncation strategy"),
    "packing": ("seqtune_register_packing", "packing strategy"),
    "optimizers": ("seqtune_register_optimizers", "optimizer"),
    "schedulers": ("seqtune_register_schedulers", "scheduler"),
    "loggers": ("seqtune_register_loggers", "logger"),
}


@dataclass
class Entry:
    name: str
    family: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str


class Registry:
    """Every registered name per family, and where it came from."""

    def __init__(self, pm: pluggy.PluginManager, entries: dict[str, dict[str, Entry]]):
        self.pm = pm
        self.entries = entries

    def get(self, family: str, name: str, problems: Problems, path: str) -> Entry | None:
        found = self.entries[family].get(name)
        if found is None:
            what = FAMILIES[family][1]
            problems.add(path, f"unknown {what} '{name}'" + did_you_mean(name, self.entries[family]))
        return found

    def bind(self, family: str, component: Component, problems: Problems, path: str) -> Callable | None:
        """The factory with the recipe's options applied, after checking them against its signature."""
        entry = self.get(family, component.name, problems, f"{path}.name" if component.options else path)
        if entry is None:
            return None
        options = check_options(entry.factory, component.options, problems, path)
        return None if options is None else partial(entry.factory, **options)

    def all_entries(self) -> list[Entry]:
        return [e for family in self.entries.values() for e in family.values()]


def check_options(factory: Callable, options: dict[str, Any], problems: Problems, path: str) -> dict | None:
    """Recipe options are the factory's keyword-only parameters; check names, types and requireds."""
    params = inspect.signature(factory).parameters.values()
    accepted = {p.name: p for p in params if p.kind is p.KEYWORD_ONLY}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    try:  # a class factory's options are its __init__'s parameters
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:  # unresolvable annotations in a third-party factory: check names only
        hints = {}
    before = len(problems.lines)
    checked = {}
    for key, value in options.items():
        if key not in accepted and not takes_any:
            problems.add(f"{path}.{key}", "unknown option" + did_you_mean(key, accepted))
        elif key in hints:
            checked[key] = convert(hints[key], value, problems, f"{path}.{key}")
        else:
            checked[key] = value
    for name, param in accepted.items():
        if param.default is param.empty and name not in options:
            problems.add(f"{path}.{name}", "missing required option")
    if len(problems.lines) > before or any(is_invalid(v) for v in checked.values()):
        return None
    return checked


def build_registry(extra_modules: list[str] | tuple[str, ...] = (),
                   where: Callable[[str], str] = lambda key: "recipe") -> Registry:
    """Register built-ins, entry points and the recipe's extra modules; check and index them.

    `where` names the file (or override) that set a recipe key, for errors about `plugins[i]`.
    """
    from plugins import BUILTIN

    pm = pluggy.PluginManager("seqtune")
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN:
        _register(pm, importlib.import_module(module_name), module_name)
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except pluggy.PluginValidationError as exc:
        raise UserError(f"plugin '{exc.plugin_name}' (entry point group '{ENTRY_POINT_GROUP}'): "
                        f"{_one_line(exc)}")
    except Exception as exc:  # a broken third-party package; say which one
        raise UserError(f"a '{ENTRY_POINT_GROUP}' entry point failed to load: {type(exc).__name__}: {exc}")
    for i, module_name in enumerate(extra_modules):
        key = f"plugins[{i}]"
        _register(pm, _import_extra(module_name, f"{where(key)}: {key}"), module_name)
    _check_pending(pm)
    return Registry(pm, _collect(pm, builtin=BUILTIN))


def _import_extra(module_name: str, label: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"{label}: cannot import plugin module '{module_name}': {exc}")


def _register(pm: pluggy.PluginManager, module: Any, name: str) -> None:
    if pm.is_registered(module) or pm.has_plugin(name):
        return
    try:
        pm.register(module, name=name)
    except pluggy.PluginValidationError as exc:
        raise UserError(f"plugin '{name}': {_one_line(exc)}")


def _one_line(exc: Exception) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _check_pending(pm: pluggy.PluginManager) -> None:
    """A hookimpl whose name matches no spec is a typo that would otherwise never be called."""
    specs = [n for n in dir(hookspecs) if n.startswith("seqtune_")]
    problems = []
    for name, caller in vars(pm.hook).items():
        if caller.spec is None:
            for impl in caller.get_hookimpls():
                problems.append(f"plugin '{impl.plugin_name}': hook '{name}' matches no hook spec"
                                + did_you_mean(name, specs))
    if problems:
        raise UserError(problems)


def _collect(pm: pluggy.PluginManager, builtin: tuple[str, ...]) -> dict[str, dict[str, Entry]]:
    dists = {pm.get_name(plugin): dist.project_name for plugin, dist in pm.list_plugin_distinfo()}
    dists.update({name: "seqtune" for name in builtin})
    entries: dict[str, dict[str, Entry]] = {family: {} for family in FAMILIES}
    problems = []
    for family, (hook_name, what) in FAMILIES.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            dist = dists.get(impl.plugin_name, _distribution_of(impl.plugin_name))
            for name, factory in (impl.function() or {}).items():
                old = entries[family].get(name)
                if old is not None:
                    problems.append(f"{what} '{name}' is registered twice: by plugin '{old.plugin}' "
                                    f"({old.distribution}) and by plugin '{impl.plugin_name}' ({dist})")
                    continue
                entries[family][name] = Entry(name, family, factory, impl.plugin_name, dist)
    if problems:
        raise UserError(problems)
    return entries


def _distribution_of(module_name: str) -> str:
    """The installed distribution that ships a module, or '-' for loose modules."""
    return ", ".join(_packages_distributions().get(module_name.split(".")[0], [])) or "-"


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    return packages_distributions()
