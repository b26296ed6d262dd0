"""The generated recipe docs: in sync with the schema, complete, and a JSON Schema that agrees with
the strict loader on what a valid recipe is."""
from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
from omegaconf import OmegaConf

from framework.config import reference
from framework.config.schema import REQUIRED, Component, Recipe
from framework.config.validate import Problems, convert

try:
    import jsonschema
except ImportError:  # not a seqtune dependency; the fallback below covers what reference.py emits
    jsonschema = None

ROOT = Path(__file__).resolve().parents[3]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
REGENERATE = "run `python -m framework.config.reference` to regenerate it"
DELETE = object()


def _schema_keys(cls: type = Recipe, prefix: str = "") -> typing.Iterator[tuple[str, Any, Any]]:
    """(key path, field, type) of every schema field, walked independently of reference.py."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path, tp = prefix + f.name, hints[f.name]
        yield path, f, tp
        for arg in (tp, *typing.get_args(tp)):  # X, Optional[X] or list[X]
            if dataclasses.is_dataclass(arg) and arg is not Component:
                sep = "[]." if typing.get_origin(tp) is list else "."
                yield from _schema_keys(arg, path + sep)


def _literal_choices(tp: Any) -> list[Any]:
    if typing.get_origin(tp) is Literal:
        return list(typing.get_args(tp))
    return [c for arg in typing.get_args(tp) for c in _literal_choices(arg)]


def _quickstart() -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(QUICKSTART), resolve=True)


# --- the committed files ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["docs/recipe-reference.md", "docs/recipe.schema.json"])
def test_committed_docs_equal_the_generated_ones(name):
    committed = ROOT / name
    assert committed.is_file(), f"{name} is missing; {REGENERATE}"
    assert committed.read_text(encoding="utf-8") == reference.outputs()[name], \
        f"{name} is out of date with framework/config/schema.py; {REGENERATE}"


def test_main_writes_the_docs_and_check_reports_drift(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reference, "ROOT", tmp_path)
    assert reference.main(["--check"]) == 1  # nothing generated yet

    assert reference.main([]) == 0
    assert reference.main(["--check"]) == 0

    (tmp_path / "docs" / "recipe.schema.json").write_text("{}\n")
    capsys.readouterr()
    assert reference.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "docs/recipe.schema.json" in err and "python -m framework.config.reference" in err
    assert "docs/recipe-reference.md" not in err


# --- the markdown reference ----------------------------------------------------------------------

def test_every_schema_field_has_one_row_with_its_full_key_path():
    rows = [line for line in reference.markdown().splitlines() if line.startswith("| `")]
    expected = [path for path, _, _ in _schema_keys()]
    assert [row.split("`")[1] for row in rows] == expected
    assert "data.mixture[].source" in expected and "launch.deepspeed.zero_stage" in expected


@pytest.mark.parametrize(("path", "f", "tp"), list(_schema_keys()), ids=lambda v: v if isinstance(v, str) else "")
def test_each_row_states_required_minimum_choices_and_plugins(path, f, tp):
    (row,) = [line for line in reference.markdown().splitlines() if line.startswith(f"| `{path}` |")]
    assert f.metadata["help"] in row
    assert ("**required**" in row) == (f.default is REQUIRED)
    if f.metadata.get("minimum") is not None:
        assert f"Minimum: {f.metadata['minimum']:g}." in row
    for choice in _literal_choices(tp):
        assert f"`{choice}`" in row
    if Component in (tp, *typing.get_args(tp)):
        assert "plugin" in row and "seqtune plugins" in row


def test_one_section_per_top_level_key_in_schema_order():
    headings = [line[3:] for line in reference.markdown().splitlines() if line.startswith("## ")]
    assert headings == [f.name for f in dataclasses.fields(Recipe)]


# --- the JSON Schema -----------------------------------------------------------------------------

_FALLBACK_KEYWORDS = {"$schema", "title", "description", "default", "type", "properties", "required",
                      "additionalProperties", "items", "enum", "minimum", "anyOf", "oneOf"}
_JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool,
               "null": type(None), "object": dict, "array": list}


def _is_type(value: Any, name: str) -> bool:
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    return isinstance(value, _JSON_TYPES[name])


def _fallback_errors(schema: dict, value: Any, path: str = "<recipe>") -> list[str]:
    """The JSON Schema keywords reference.py emits, checked structurally (no jsonschema)."""
    assert set(schema) <= _FALLBACK_KEYWORDS, f"fallback lacks {set(schema) - _FALLBACK_KEYWORDS}"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            passing = sum(not _fallback_errors(s, value, path) for s in schema[key])
            if passing == 0 or (key == "oneOf" and passing > 1):
                return [f"{path}: matches {passing} of {key}"]
    types = schema.get("type", [])
    if types and not any(_is_type(value, t) for t in ([types] if isinstance(types, str) else types)):
        return [f"{path}: not {types}"]
    if "enum" in schema and not any(type(value) is type(c) and value == c for c in schema["enum"]):
        return [f"{path}: {value!r} not in {schema['enum']}"]
    if "minimum" in schema and _is_type(value, "number") and value < schema["minimum"]:
        return [f"{path}: below {schema['minimum']}"]
    errors = []
    if isinstance(value, dict):
        errors += [f"{path}.{k}: required" for k in schema.get("required", []) if k not in value]
        for key, sub in value.items():
            if key in schema.get("properties", {}):
                errors += _fallback_errors(schema["properties"][key], sub, f"{path}.{key}")
            elif schema.get("additionalProperties", True) is False:
                errors.append(f"{path}.{key}: unknown key")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += _fallback_errors(schema["items"], item, f"{path}[{i}]")
    return errors


def _schema_errors(data: Any) -> list[str]:
    schema = reference.json_schema()
    if jsonschema is not None:
        return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(data)]
    return _fallback_errors(schema, data)


def _loader_errors(data: Any) -> list[str]:
    problems = Problems(lambda key: "recipe")
    convert(Recipe, data, problems)
    return problems.lines


def _edit(data: dict, dotted: str, value: Any) -> dict:
    """A copy of `data` with `dotted` (list indices as numbers: data.mixture.0.source) set or deleted."""
    data = copy.deepcopy(data)
    *parents, last = [int(p) if p.isdigit() else p for p in dotted.split(".")]
    node = data
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


def test_the_schema_is_a_valid_draft_2020_12_schema():
    schema = reference.json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    if jsonschema is not None:
        jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["output_dir", "data"]


def test_the_schema_accepts_the_quickstart_recipe():
    assert _schema_errors(_quickstart()) == []


def test_the_schema_accepts_extends_as_a_path_or_a_list():
    assert _schema_errors({**_quickstart(), "extends": "base.yaml"}) == []
    assert _schema_errors({**_quickstart(), "extends": ["a.yaml", "b.yaml"]}) == []
    assert _schema_errors({**_quickstart(), "extends": 3}) != []


@pytest.mark.parametrize(("key", "value", "valid"), [
    ("trian", {"epochs": 2}, False),                       # unknown top-level key
    ("train.max_step", 5, False),                          # unknown nested key
    ("data.mixture.0.fracton", 0.5, False),                # unknown key in a list element
    ("train.loss_reduction", "median", False),             # bad Literal
    ("model.dtype", "bf16", False),
    ("launch.deepspeed", {"zero_stage": 4}, False),        # bad int Literal
    ("launch.deepspeed", {"zero_stage": 3, "offload_params": True}, True),
    ("launch.deepspeed", None, True),
    ("train.epochs", 0, False),                            # below the minimum
    ("train.clip_grad_norm", 1, True),                     # an int where a float goes
    ("seed", True, False),                                 # a bool is not an int
    ("seed", "seven", False),
    ("checkpoint", {"every": "epoch"}, True),
    ("checkpoint", {"every": 100}, True),
    ("checkpoint", {"every": 0}, False),
    ("checkpoint", {"every": "daily"}, False),
    ("optimizer", {"name": "adamw", "lr": 1e-4, "betas": [0.9, 0.95]}, True),
    ("optimizer", {"lr": 1e-4}, False),                    # a component needs a name
    ("logging.loggers", ["rich", {"name": "jsonl", "every": 2}], True),
    ("logging.loggers", "rich", False),
    ("output_dir", DELETE, False),                         # required keys
    ("data.mixture.0.source", DELETE, False),
])
def test_the_schema_agrees_with_the_loader(key, value, valid):
    data = _edit(_quickstart(), key, value)
    assert (_loader_errors(data) == []) is valid
    assert (_schema_errors(data) == []) is valid
