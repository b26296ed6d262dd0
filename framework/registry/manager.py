"""The plugin manager: collects every plugin's registrations, from three places, in this order.

- Built-ins: the modules listed in `plugins.BUILTIN`.
- Third-party packages: the `seqtune` entry-point group. One that fails to import, or whose hook
  implementations do not match the contract's signatures, is skipped with a one-line warning naming
  its distribution; the others load. `SEQTUNE_DISABLE_PLUGIN_AUTOLOAD=1` loads none of them, and
  `SEQTUNE_BLOCK_PLUGINS=name,...` (or `seqtune --block-plugin NAME`) skips plugins by the name
  `seqtune plugins` lists, as pytest's `-p no:NAME` does.
- The recipe's `plugins:` list of dotted module paths: the user's own code, so any problem with one
  is an error.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import math
import os
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import entry_points
from typing import Any, Callable

import pluggy

from framework import hookspecs
from framework.config.schema import Component
from framework.config.validate import Problems, convert, is_invalid
from framework.errors import UserError, did_you_mean
from framework.registry.factories import check_options
from framework.types import BoundReward

ENTRY_POINT_GROUP = "seqtune"
DISABLE_AUTOLOAD_ENV = "SEQTUNE_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "SEQTUNE_BLOCK_PLUGINS"
FAMILIES = {  # family -> (registration hook, what the recipe calls one)
    "dataset_loaders": ("seqtune_register_dataset_loaders", "dataset loader"),
    "dataset_formats": ("seqtune_register_dataset_formats", "dataset format"),
    "chat_templates": ("seqtune_register_chat_templates", "chat template"),
    "truncation": ("seqtune_register_truncation", "truncation strategy"),
    "packing": ("seqtune_register_packing", "packing strategy"),
    "optimizers": ("seqtune_register_optimizers", "optimizer"),
    "schedulers": ("seqtune_register_schedulers", "scheduler"),
    "losses": ("seqtune_register_losses", "loss"),
    "loggers": ("seqtune_register_loggers", "logger"),
    "objectives": ("seqtune_register_objectives", "objective"),
    "rewards": ("seqtune_register_rewards", "reward"),
    "generators": ("seqtune_register_generators", "generator"),
}


@dataclass
class Entry:
    name: str
    family: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str


@dataclass
class Registry:
    """Every registered name per family, where it came from, and the plugins that were skipped."""

    pm: pluggy.PluginManager
    entries: dict[str, dict[str, Entry]]
    warnings: list[str] = field(default_factory=list)  # one line per skipped third-party plugin

    def get(self, family: str, name: str, problems: Problems, path: str) -> Entry | None:
        found = self.entries[family].get(name)
        if found is None:
            what = FAMILIES[family][1]
            skipped = f" ({len(self.warnings)} third-party plugin(s) were skipped: see the warnings)" \
                if self.warnings else ""
            problems.add(path, f"unknown {what} '{name}'" + did_you_mean(name, self.entries[family]) + skipped)
        return found

    def bind(self, family: str, component: Component, problems: Problems, path: str) -> Callable | None:
        """The factory with the recipe's options applied, after checking them against its signature; the
        options it declares as naming plugins of another family (`factory.plugin_options`) are bound too."""
        entry = self.get(family, component.name, problems, f"{path}.name" if component.options else path)
        if entry is None:
            return None
        options = check_options(entry.factory, component.options, problems, path)
        plugins = self._plugin_options(entry.factory, component.options, problems, path)
        if options is None or plugins is None:
            return None
        return partial(entry.factory, **{**options, **plugins})

    def _plugin_options(self, factory: Callable, options: dict[str, Any], problems: Problems, path: str
                        ) -> dict[str, Any] | None:
        """Each option `factory.plugin_options` maps to a family (`{"rewards": "rewards"}`), set or defaulted,
        bound as that family's plugins: a list of components stays a list of bound factories, a reward is a
        `BoundReward` with its `weight`. Bound even when the factory's other options are wrong, so that
        every problem shows in one pass; None when any of these is wrong."""
        before = len(problems.lines)
        bound: dict[str, Any] = {}
        for option, family in (getattr(factory, "plugin_options", None) or {}).items():
            value, at = options.get(option, _default(factory, option)), f"{path}.{option}"
            if value is None or problems.touches(at):  # unset and no default, or already refused as raw YAML
                continue
            if isinstance(value, (list, tuple)):
                bound[option] = [self._bind_one(family, item, problems, f"{at}[{i}]") for i, item in enumerate(value)]
            else:
                bound[option] = self._bind_one(family, value, problems, at)
        return bound if len(problems.lines) == before else None

    def _bind_one(self, family: str, value: Any, problems: Problems, path: str) -> Any:
        """One component (a name, or a mapping with `name` and options) of a plugin-valued option."""
        component = convert(Component, value, problems, path)
        if is_invalid(component):
            return None
        weighted = family == "rewards"  # a reward's weight in the sum is the objective's, not the reward's option
        weight = component.options.pop("weight", 1.0) if weighted else None
        if weighted and not _positive(weight):
            problems.add(f"{path}.weight", f"must be a number above 0, got {weight!r}")
            weighted = False
        factory = self.bind(family, component, problems, path)
        if family != "rewards" or factory is None:
            return factory
        return BoundReward(component.name, float(weight), factory) if weighted else None

    def all_entries(self) -> list[Entry]:
        return [e for family in self.entries.values() for e in family.values()]


def _default(factory: Callable, option: str) -> Any:
    param = inspect.signature(factory).parameters.get(option)
    return None if param is None or param.default is param.empty else param.default


def _positive(number: Any) -> bool:
    return isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number) and number > 0


def blocked_plugins() -> set[str]:
    return {name.strip() for name in os.environ.get(BLOCK_ENV, "").split(",") if name.strip()}


def build_registry(extra_modules: list[str] | tuple[str, ...] = (),
                   where: Callable[[str], str] = lambda key: "recipe") -> Registry:
    """Register built-ins, entry points and the recipe's extra modules; check and index them.

    `where` names the file (or override) that set a recipe key, for errors about `plugins[i]`.
    """
    from plugins import BUILTIN

    pm = pluggy.PluginManager("seqtune")
    pm.add_hookspecs(hookspecs)
    blocked = blocked_plugins()
    for module_name in BUILTIN:
        if module_name not in blocked:
            _register(pm, importlib.import_module(module_name), module_name)
    warnings: list[str] = []
    dists = {name: "seqtune" for name in BUILTIN}
    if os.environ.get(DISABLE_AUTOLOAD_ENV) != "1":
        dists.update(_load_entry_points(pm, blocked, warnings))
    for i, module_name in enumerate(extra_modules):
        key = f"plugins[{i}]"
        _register(pm, _import_extra(module_name, f"{where(key)}: {key}"), module_name)
    _check_pending(pm, blocked)
    return Registry(pm, _collect(pm, dists), warnings)


def _load_entry_points(pm: pluggy.PluginManager, blocked: set[str], warnings: list[str]) -> dict[str, str]:
    """Register each entry point of the group; {plugin name: distribution} of those registered."""
    loaded = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        dist = point.dist.name if point.dist is not None else "-"
        if point.name in blocked or pm.has_plugin(point.name):
            continue
        try:
            pm.register(point.load(), name=point.name)
        except Exception as exc:  # an import error, or hook signatures off the contract: skip this one
            warnings.append(f"plugin '{point.name}' from distribution {dist} was skipped: {_one_line(exc)}; "
                            f"to silence this, uninstall it or set {BLOCK_ENV}={point.name}")
            continue
        loaded[point.name] = dist
    return loaded


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
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text if isinstance(exc, pluggy.PluginValidationError) else f"{type(exc).__name__}: {text}"


def _check_pending(pm: pluggy.PluginManager, blocked: set[str]) -> None:
    """A hookimpl whose name matches no spec is a typo that would otherwise never be called."""
    specs = [n for n in dir(hookspecs) if n.startswith("seqtune_")]
    problems = []
    for name, caller in vars(pm.hook).items():
        if caller.spec is None:
            for impl in caller.get_hookimpls():
                hint = f" (or skip the plugin: {BLOCK_ENV}={impl.plugin_name})"
                problems.append(f"plugin '{impl.plugin_name}': hook '{name}' matches no hook spec"
                                + did_you_mean(name, specs) + hint)
    if problems:
        raise UserError(problems)


def _collect(pm: pluggy.PluginManager, dists: dict[str, str]) -> dict[str, dict[str, Entry]]:
    entries: dict[str, dict[str, Entry]] = {family: {} for family in FAMILIES}
    problems = []
    for family, (hook_name, what) in FAMILIES.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            dist = dists.get(impl.plugin_name) or _distribution_of(impl.plugin_name)
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
