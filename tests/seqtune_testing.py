"""Helpers shared by test modules (importable because tests/conftest.py appends tests/ to sys.path)."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from framework.data.chat import encode_chats
from framework.types import IGNORE_INDEX, Sample

REPO = Path(__file__).resolve().parent.parent
# Slow-to-build test inputs (the Qwen2.5 tokenizer, the SmolLM2 model folder) are kept here across runs.
TEST_CACHE = Path(os.environ.get("SEQTUNE_TEST_CACHE", Path.home() / ".cache" / "seqtune-tests"))

# Short chats of varied shape (a system prompt, several exchanges), for tests that compute on every token.
CONVERSATIONS = [
    [{"role": "user", "content": "Reverse: c a t"}, {"role": "assistant", "content": "t a c"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Uppercase: sun"},
     {"role": "assistant", "content": "SUN"}, {"role": "user", "content": "What is 4 + 5?"},
     {"role": "assistant", "content": "4 + 5 = 9"}],
    [{"role": "user", "content": "Sort: 7 2 9 1"}, {"role": "assistant", "content": "1 2 7 9"}],
    [{"role": "user", "content": "Repeat sun 3 times."}, {"role": "assistant", "content": "sun sun sun"}],
    [{"role": "user", "content": "What letter comes after k?"}, {"role": "assistant", "content": "l"}],
]


def encode_chat(tokenizer: Any, messages: list[dict], train_on: str = "assistant") -> Sample:
    """One conversation: token ids of its rendering, labels -100 outside the trained turns."""
    return encode_chats(tokenizer, [messages], train_on)[0]


def trained_runs(labels: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each contiguous run of trained labels."""
    found, start = [], None
    for t, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = t
        elif label == IGNORE_INDEX and start is not None:
            found.append((start, t))
            start = None
    return found


def mixture_rows(data: Any) -> Any:
    """The prepared data's mixture as a small in-memory Dataset of formatted rows in mixture order:
    messages, text, source (data.mixture index) and row (1-based in its source)."""
    import datasets

    reader = data.reader()
    out: dict[str, list] = {"messages": [], "text": [], "source": [], "row": []}
    for rows, _, source, index in reader.batches(0, len(reader.plan)):
        out["messages"] += [messages for messages, _, _ in rows]
        out["text"] += [text for _, text, _ in rows]
        out["source"] += [int(s) for s in source]
        out["row"] += [int(i) + 1 for i in index]
    return datasets.Dataset.from_dict(out)


def formatted_source(loaded: Any, index: int, entry: Any, to_messages: Any) -> Any:
    """A loader's rows through make_source, every row formatted (so every format error shows)."""
    from framework.data.sources import make_source

    source = make_source(loaded, index, entry, to_messages)
    source.formatted(range(len(source)))
    return source


def load_script(name: str) -> Any:
    """A module of scripts/ or bench/ (`"scripts/ask"`), loaded by path: those folders are not packages."""
    module_name = "seqtune_" + name.replace("/", "_")
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, REPO / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]
