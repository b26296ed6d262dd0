"""Render docs/recipe-reference.md and docs/recipe.schema.json from the recipe schema.

Both files are generated so they cannot drift from `framework/config/schema.py`:
`python -m framework.config.reference` rewrites them and `--check` fails when either is stale.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from framework.config.schema import REQUIRED, Component, Recipe

ROOT = Path(__file__).resolve().parents[2]  # the repository root, where docs/ lives
COMPONENT_NOTE = "A plugin name, or `{name: ..., <options>}`; `seqtune plugins` lists the names."
_NULL = type(None)

INTRO = """\
# Recipe reference

<!-- Generated from framework/config/schema.py by `python -m framework.config.reference`; do not edit. -->

A recipe is a YAML file run with `seqtune train recipe.yaml [key=value ...]`. `extends: base.yaml`
(or a list, relative to this file) merges it over other recipes: later files win, lists are
replaced. `key=value` arguments (the value read as YAML: `train.max_steps=10`) override after
merging, then `${other.key}` interpolations resolve. Validation is strict and takes one pass:
unknown keys, wrong types, values below a minimum or outside the listed choices, impossible
combinations, unknown plugins and plugin options, option values outside a plugin's bounds, and
local paths that do not exist are all reported at once (`seqtune check recipe.yaml` shows the
resolved recipe).

A `plugin` key takes a plugin name (`adamw`) or `{name: adamw, <that plugin's options>}`;
`seqtune plugins` lists the names. `[]` in a key means every list element. Editors can validate
recipes against `docs/recipe.schema.json` as you type ([how](editors.md)).
"""


def markdown() -> str:
    """The recipe reference: the intro, then one table per top-level key in schema order."""
    sections = [INTRO.rstrip(), "Top-level keys: " + ", ".join(
        f"[`{f.name}`](#{f.name})" for f in dataclasses.fields(Recipe))]
    for name, rows in itertools.groupby(_fields(Recipe), key=lambda row: re.split(r"[.\[]", row[0])[0]):
        table = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
        sections.append(f"## {name}\n\n" + "\n".join(table + [_markdown_row(*row) for row in rows]))
    return "\n\n".join(sections) + "\n"


def json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) for recipe files, as editors and CI validators read it."""
    schema = _object_schema(Recipe)
    extends = {"description": "Recipe file(s) this one is merged over, relative to it; later files win.",
               "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "seqtune recipe",
        "description": "A seqtune recipe, generated from framework/config/schema.py. Values are checked "
                       "as written, so a ${...} interpolation in a non-string key is flagged here; "
                       "`seqtune check` validates after resolving it.",
        **schema,
        "properties": {"extends": extends, **schema["properties"]},
    }


def outputs() -> dict[str, str]:
    """The generated files' text by path relative to the repository root."""
    return {"docs/recipe-reference.md": markdown(),
            "docs/recipe.schema.json": json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"}


def main(argv: list[str] | None = None) -> int:
    return generate(outputs(), argv, "framework.config.reference", "the recipe reference and JSON Schema",
                    "framework/config/schema.py", ROOT)


def generate(generated: dict[str, str], argv: list[str] | None, module: str, what: str, source: str,
             root: Path) -> int:
    """Write generated docs files under `root`, or with --check exit 1 when a committed one differs."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=f"Regenerate {what}.")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a committed file differs from the generated one")
    args = parser.parse_args(argv)
    if args.check:
        stale = [p for p, text in generated.items()
                 if not (root / p).is_file() or (root / p).read_text(encoding="utf-8") != text]
        if stale:
            print(f"out of date with {source}: {', '.join(stale)}; run `python -m {module}`", file=sys.stderr)
        return 1 if stale else 0
    for path, text in generated.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8", newline="\n")
        print(f"wrote {path}")
    return 0


def _fields(cls: type, prefix: str = "") -> typing.Iterator[tuple[str, dataclasses.Field, Any]]:
    """(key path, field, type) of every key under `cls`, each parent before its children."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path, tp = prefix + f.name, hints[f.name]
        yield path, f, tp
        inner, in_list = _nested(tp)
        if inner is not None:
            yield from _fields(inner, f"{path}[]." if in_list else f"{path}.")


def _nested(tp: Any) -> tuple[type | None, bool]:
    """The schema dataclass whose keys sit below a key of type `tp`, and whether via a list."""
    args = [a for a in typing.get_args(tp) if a is not _NULL]
    if _is_union(tp) and len(args) == 1:
        return _nested(args[0])
    if typing.get_origin(tp) is list:
        return _nested(args[0])[0], True
    if dataclasses.is_dataclass(tp) and tp is not Component:
        return tp, False
    return None, False


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _uses_component(tp: Any) -> bool:
    return tp is Component or any(_uses_component(a) for a in typing.get_args(tp))


def _default(f: dataclasses.Field) -> Any:
    """The plain-data default of a field; REQUIRED, or MISSING where it is a nested section."""
    if f.default is REQUIRED:
        return REQUIRED
    return _plain(f.default if f.default_factory is dataclasses.MISSING else f.default_factory())


def _plain(value: Any) -> Any:
    if isinstance(value, Component):
        return {"name": value.name, **value.options} if value.options else value.name
    if dataclasses.is_dataclass(value):
        return dataclasses.MISSING  # its own keys document their defaults
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _description(f: dataclasses.Field, tp: Any) -> str:
    return f"{f.metadata['help']} {COMPONENT_NOTE}" if _uses_component(tp) else f.metadata["help"]


def _markdown_row(path: str, f: dataclasses.Field, tp: Any) -> str:
    default = _default(f)
    if default is REQUIRED:
        shown = "**required**"
    else:
        shown = "" if default is dataclasses.MISSING else f"`{_yaml(default)}`"
    text = _description(f, tp)
    if f.metadata.get("minimum") is not None:
        text += f" Minimum: {f.metadata['minimum']:g}."
    cells = [f"`{path}`", _markdown_type(tp), shown, text]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _markdown_type(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(f"`{_yaml(c)}`" for c in args)
    if _is_union(tp):
        return " or ".join(", ".join(f"`{_yaml(c)}`" for c in typing.get_args(a))
                           if typing.get_origin(a) is Literal else _markdown_type(a) for a in args)
    if origin is list:
        return f"list[{_markdown_type(args[0])}]"
    if tp is Component:
        return "plugin"
    if dataclasses.is_dataclass(tp) or tp is dict or origin is dict:
        return "mapping"
    return {_NULL: "null", Any: "any"}.get(tp) or tp.__name__


def _yaml(value: Any) -> str:
    """A default as it would be written in a recipe."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _object_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties = {f.name: _property(f, hints[f.name]) for f in dataclasses.fields(cls)}
    required = [f.name for f in dataclasses.fields(cls) if f.default is REQUIRED]
    return {"type": "object", "properties": properties, **({"required": required} if required else {}),
            "additionalProperties": False}


def _property(f: dataclasses.Field, tp: Any) -> dict[str, Any]:
    schema = {"description": _description(f, tp), **_type_schema(tp, f.metadata.get("minimum"))}
    default = _default(f)
    if default is not REQUIRED and default is not dataclasses.MISSING:
        try:
            schema["default"] = json.loads(json.dumps(default))
        except (TypeError, ValueError):
            pass  # a default JSON cannot express is documented in the markdown only
    return schema


def _type_schema(tp: Any, minimum: float | None) -> dict[str, Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Component:
        named = {"type": "object", "properties": {"name": {"type": "string"}},
                 "required": ["name"], "additionalProperties": True}
        return {"oneOf": [{"type": "string"}, named]}
    if dataclasses.is_dataclass(tp):
        return _object_schema(tp)
    if origin is Literal:
        return {"enum": list(args)}
    if _is_union(tp):
        return {"anyOf": [_type_schema(a, minimum) for a in args]}
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0], minimum)}
    if tp is dict or origin is dict:
        return {"type": "object"}
    if tp is Any:
        return {}
    name = {str: "string", int: "integer", float: "number", bool: "boolean", _NULL: "null"}[tp]
    numeric = minimum is not None and tp in (int, float)
    return {"type": name, "minimum": minimum} if numeric else {"type": name}


if __name__ == "__main__":
    sys.exit(main())
