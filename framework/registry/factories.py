"""What a plugin factory tells about itself: its recipe options (its keyword-only parameters, with
their annotations) and the values it declares for planning (attributes documented in hookspecs.py)."""
from __future__ import annotations

import inspect
import typing
from functools import partial
from typing import Any, Callable

from framework.config.validate import Problems, convert, is_invalid
from framework.errors import did_you_mean


def check_options(factory: Callable, options: dict[str, Any], problems: Problems, path: str) -> dict | None:
    """Recipe options are the factory's keyword-only parameters: check names, types, requireds, the
    bounds annotated on them (`Annotated[float, Bounds(gt=0)]`), and the rules the factory declares
    (`factory.check`), all without calling it. The checked options, or None when any is wrong."""
    checked = _typed_options(factory, options, problems, path)
    if checked is None:
        return None
    before = len(problems.lines)
    effective = {**_defaults(factory), **checked}  # a rule sees every option, set or defaulted
    for option, message in declared(partial(factory, **effective), "check", default=()) or ():
        problems.add(f"{path}.{option}" if option else path, message)
    return checked if len(problems.lines) == before else None


def _defaults(factory: Callable) -> dict[str, Any]:
    params = inspect.signature(factory).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}


def _typed_options(factory: Callable, options: dict[str, Any], problems: Problems, path: str) -> dict | None:
    params = inspect.signature(factory).parameters.values()
    accepted = {p.name: p for p in params if p.kind is p.KEYWORD_ONLY}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    try:  # a class factory's options are its __init__'s parameters
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory,
                                      include_extras=True)
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


def declared(bound: Callable, attribute: str, *args: Any, default: Any = None) -> Any:
    """A value a plugin declares on its factory (`adamw.state_tensors = 2`), for planning.

    `bound` is the factory with the recipe's options applied (`Registry.bind`). The attribute is a
    constant, or a function called with `args` and those of the recipe's options it accepts (all of
    them when it takes **kwargs). `default` when the factory declares nothing.
    """
    factory = getattr(bound, "func", bound)
    options = dict(getattr(bound, "keywords", None) or {})
    value = getattr(factory, attribute, None)
    if value is None:
        return default
    if not callable(value):
        return value
    params = inspect.signature(value).parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        names = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        options = {k: v for k, v in options.items() if k in names}
    return value(*args, **options)


def optimizer_state_tensors(bound: Callable, name: str) -> tuple[int, str | None]:
    """(full-size state tensors per trained parameter the optimizer declares, a note when it declares
    none and Adam's 2 is assumed)."""
    count = declared(bound, "state_tensors")
    if count is None:
        return 2, (f"optimizer '{name}' declares no state_tensors (see hookspecs.py); planned as 2 per "
                   "trained parameter, like Adam")
    return int(count), None
