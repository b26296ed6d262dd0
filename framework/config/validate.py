"""Check plain recipe data against the schema dataclasses, collecting every problem.

OmegaConf's structured configs stop at the first error and say nothing of files; this walker
reports all problems at once, each with the file (or override) that set the key and a
did-you-mean. It builds the typed dataclasses even when some keys are wrong (those keep their
defaults and are recorded as invalid), so the checks that come after it (combinations, plugins,
paths) still run in the same pass and skip only what depends on a wrong key.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Union

from framework.config.schema import REQUIRED, Component
from framework.errors import did_you_mean
from framework.types import Bounds

Where = Callable[[str], str]  # key path -> "recipes/x.yaml" or "override a.b=1"
_INVALID = object()
UNRESOLVED: Any = object()  # a value whose ${...} could not be resolved: already reported, not checked


class Problems:
    """Problems found so far; `where` names the source of a key path. `invalid` holds the key paths
    that have a problem, so that checks depending on them can stay silent."""

    def __init__(self, where: Where, check_required: bool = True):
        self.where = where
        self.lines: list[str] = []
        self.invalid: set[str] = set()
        self.check_required = check_required  # false while a parent file is unreadable
        self.absent: dict[str, str] = {}  # key -> line: a local path missing here (it may exist where it trains)

    def add(self, path: str, message: str) -> object:
        self.lines.append(f"{self.where(path)}: {path or '<recipe>'}: {message}")
        self.invalid.add(path)
        return _INVALID

    def add_absent(self, path: str, message: str) -> None:
        """A local path the recipe names that does not exist on this machine: a problem for `check` and
        `train`; `plan` can do without it (it plans another machine's run)."""
        self.add(path, message)
        self.absent[path] = self.lines[-1]

    def touches(self, *paths: str) -> bool:
        """Whether any of the paths, a key inside one, or one of their parents has a problem."""
        return any(bad == path or bad.startswith((path + ".", path + "[")) or path.startswith((bad + ".", bad + "["))
                   or not bad for bad in self.invalid for path in paths)


def convert(tp: Any, value: Any, problems: Problems, path: str = "") -> Any:
    """Check `value` against a type annotation and convert it: a schema dataclass (the recipe, built
    from its plain data) or a plugin option's type. Problems are collected; `_INVALID` on error."""
    return _convert(tp, value, problems, path, minimum=None)


def is_invalid(value: Any) -> bool:
    return value is _INVALID


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _convert(tp: Any, value: Any, problems: Problems, path: str, minimum: float | None) -> Any:
    if value is UNRESOLVED:
        return _INVALID
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _bounded(tp, value, problems, path, minimum)
    if dataclasses.is_dataclass(tp) and tp is not Component:
        return _dataclass(tp, value, problems, path)
    if tp is Component:
        return _component(value, problems, path)
    if origin in (Union, types.UnionType):
        return _union(tp, value, problems, path, minimum)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) in {type(c) for c in choices}:
            return value
        hint = did_you_mean(str(value), [str(c) for c in choices])
        return problems.add(path, f"invalid value {value!r}{hint}")
    if tp in (list, tuple) or origin in (list, tuple):
        return _sequence(tp, value, problems, path, minimum)
    if tp is dict or origin is dict:
        return dict(value) if isinstance(value, Mapping) else problems.add(
            path, f"expected a mapping, got {_kind(value)}")
    return _scalar(tp, value, problems, path, minimum)


def _bounded(tp: Any, value: Any, problems: Problems, path: str, minimum: float | None) -> Any:
    """An Annotated type: the base type's check, then every Bounds it carries."""
    base, *extras = typing.get_args(tp)
    result = _convert(base, value, problems, path, minimum)
    if result is _INVALID or result is None:
        return result
    numbers = result if isinstance(result, (list, tuple)) else [result]
    for bounds in (extra for extra in extras if isinstance(extra, Bounds)):
        bad = [n for n in numbers if isinstance(n, (int, float)) and not bounds.holds(n)]
        if bad:
            return problems.add(path, f"must be {bounds}, got {value!r}")
    return result


def _sequence(tp: Any, value: Any, problems: Problems, path: str, minimum: float | None) -> Any:
    """Lists, and tuples (YAML has only lists): every item checked against its annotation."""
    if not isinstance(value, (list, tuple)):
        return problems.add(path, f"expected a list, got {_kind(value)}")
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    if typing.get_origin(tp) is tuple and len(args) > 1 and len(args) != len(value):
        return problems.add(path, f"expected a list of {len(args)} items, got {len(value)}")
    item_types = args if len(args) == len(value) and len(args) > 1 else [args[0] if args else Any] * len(value)
    items = [_convert(t, v, problems, f"{path}[{i}]", minimum)
             for i, (t, v) in enumerate(zip(item_types, value))]
    return _INVALID if _INVALID in items else items


_CHECKS = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


def _scalar(tp: Any, value: Any, problems: Problems, path: str, minimum: float | None) -> Any:
    if tp not in _CHECKS:  # a type a plugin may annotate that YAML cannot express: pass it through
        return value
    if not _CHECKS[tp](value):
        return problems.add(path, f"expected {tp.__name__}, got {_kind(value)}")
    if minimum is not None and tp in (int, float) and value < minimum:
        return problems.add(path, f"must be at least {minimum:g}, got {value!r}")
    return float(value) if tp is float else value


def _union(tp: Any, value: Any, problems: Problems, path: str, minimum: float | None) -> Any:
    members = typing.get_args(tp)
    if value is None:
        return None if type(None) in members else problems.add(path, "must not be null")
    candidates = [m for m in members if m is not type(None)]
    for member in candidates:
        trial = Problems(problems.where)
        result = _convert(member, value, trial, path, minimum)
        if not trial.lines:
            return result
        if len(candidates) == 1 or _accepts_type(member, value):
            problems.lines.extend(trial.lines)  # the right kind of value, but a bad one
            problems.invalid |= trial.invalid
            return _INVALID
    expected = " or ".join(_describe(m) for m in members)
    return problems.add(path, f"expected {expected}, got {_kind(value)} {value!r}")


def _accepts_type(member: Any, value: Any) -> bool:
    """Whether `value` is of the kind `member` takes, so its error is the relevant one."""
    if typing.get_origin(member) is Literal:
        return False
    return member in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool)


def _dataclass(cls: type, value: Any, problems: Problems, path: str) -> Any:
    if not isinstance(value, Mapping):
        return problems.add(path, f"expected a mapping, got {_kind(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            problems.add(_join(path, str(key)), "unknown key" + did_you_mean(str(key), fields))
    kwargs = {}
    for name, f in fields.items():
        sub = _join(path, name)
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], problems, sub, f.metadata.get("minimum"))
        elif f.default is REQUIRED:
            kwargs[name] = problems.add(sub, f"missing required key ({f.metadata['help']})") \
                if problems.check_required else _INVALID
    # A wrong key keeps its default (a required one None), so later checks can run on the rest.
    return cls(**{name: (None if f.default is REQUIRED else _default(f)) if kwargs.get(name) is _INVALID
                  else kwargs[name] for name, f in fields.items() if name in kwargs or f.default is REQUIRED})


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _component(value: Any, problems: Problems, path: str) -> Any:
    if isinstance(value, str):
        return Component(value)
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        return Component(value["name"], {k: v for k, v in value.items() if k != "name"})
    return problems.add(path, "expected a plugin name or a mapping with a 'name' key, "
                              f"got {_kind(value)}")


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(c) for c in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
