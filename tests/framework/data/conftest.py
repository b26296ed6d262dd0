"""A real recipe in tmp_path, bound and prepared exactly as the engine does it.

`write_recipe(mixture, **data)` writes a YAML recipe (quickstart tokenizer, cache in tmp_path) and
loads it with `load_recipe`; `kit.prepare(loaded)` binds its plugins, loads its tokenizer and runs
`prepare_data`. The `kit` fixture holds the helpers (test modules cannot import a conftest under
--import-mode=importlib).
"""
from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from framework.registry import bind_parts
from framework.config import LoadedRecipe, load_recipe
from framework.data.pipeline import PreparedData, prepare_data
from framework.model.tokenizer import load_tokenizer

IM_END = "<|im_end|>"


def chat(*turns: str) -> dict[str, Any]:
    """A `messages` row alternating user/assistant, starting with the user."""
    roles = ("user", "assistant")
    return {"messages": [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def conversations(n: int) -> list[dict[str, Any]]:
    """`n` distinct multi-turn conversations of varied length (1 to 3 exchanges)."""
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]
    rows = []
    for i in range(n):
        turns = []
        for k in range(1 + i % 3):
            turns.append(f"question {i} part {k}: " + " ".join(words[: 1 + (i + k) % len(words)]))
            turns.append(f"answer {i}.{k} " + " ".join(reversed(words[: 2 + (i * 3 + k) % 7])))
        rows.append(chat(*turns))
    return rows


@pytest.fixture
def tokenizer_dir(repo: Path) -> Path:
    return repo / "recipes" / "quickstart" / "tokenizer"


@pytest.fixture
def write_recipe(tmp_path: Path, tokenizer_dir: Path):
    """write_recipe(mixture, seed=..., tokenizer={...}, name=..., **data_keys) -> LoadedRecipe."""

    def _write(mixture: list[dict], *, seed: int = 42, tokenizer: dict | None = None,
               name: str = "recipe.yaml", **data: Any) -> LoadedRecipe:
        recipe = {
            "output_dir": str(tmp_path / "out"),
            "seed": seed,
            "model": {"config": {"model_type": "llama"}},
            "tokenizer": {"name_or_path": str(tokenizer_dir), **(tokenizer or {})},
            "data": {"mixture": [{k: (str(v) if isinstance(v, Path) else v) for k, v in entry.items()}
                                 for entry in mixture],
                     "cache_dir": str(tmp_path / "cache"), **data},
        }
        path = tmp_path / name
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return load_recipe(path)

    return _write


def prepare(loaded: LoadedRecipe) -> PreparedData:
    parts = bind_parts(loaded)
    tokenizer = load_tokenizer(loaded.recipe, parts.registry.entries["chat_templates"])
    return prepare_data(loaded.recipe, parts.loaders, parts.formats, parts.truncation, tokenizer)


def rows_of(data: PreparedData) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The tokenized rows as hashable (input_ids, labels) pairs, in dataset order."""
    return [(tuple(ids), tuple(labels)) for ids, labels in zip(data.dataset["input_ids"], data.dataset["labels"])]


@pytest.fixture
def kit(tokenizer_dir: Path) -> types.SimpleNamespace:
    return types.SimpleNamespace(chat=chat, write_jsonl=write_jsonl, conversations=conversations,
                                 prepare=prepare, rows_of=rows_of, IM_END=IM_END)
