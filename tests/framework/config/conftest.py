"""Shared fixtures for the recipe-loading tests: small YAML recipes written into tmp_path.

Every test runs with tmp_path as the working directory, so the file names in error messages are
the short relative names the tests wrote (`recipe.yaml`, `base/base.yaml`).
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from framework.config import load_recipe
from framework.errors import UserError

# The smallest recipe that loads: output_dir, a model and one mixture entry.
MINIMAL = """\
output_dir: out
model:
  name_or_path: tiny-model
data:
  mixture:
    - source: rows.jsonl
      fraction: 1.0
"""


@pytest.fixture
def recipe_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def write(recipe_dir: Path):
    """write(name, yaml_text) -> the relative Path of the written file (parents created)."""

    def _write(name: str, text: str) -> Path:
        path = recipe_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return Path(name)

    return _write


@pytest.fixture
def minimal() -> str:
    """The text of a minimal valid recipe; append top-level sections it does not set."""
    return MINIMAL


@pytest.fixture
def problems():
    """problems(path, overrides) -> the UserError's problem lines (fails if it loads)."""

    def _problems(path, overrides=()) -> list[str]:
        with pytest.raises(UserError) as info:
            load_recipe(path, list(overrides))
        lines = info.value.problems
        assert lines, "a UserError must carry at least one problem"
        for line in lines:
            assert "\n" not in line, f"each problem must be one line: {line!r}"
        return lines

    return _problems


@pytest.fixture
def problem(problems):
    """problem(path, overrides) -> the single problem line of the UserError."""

    def _problem(path, overrides=()) -> str:
        lines = problems(path, overrides)
        assert len(lines) == 1, lines
        return lines[0]

    return _problem
