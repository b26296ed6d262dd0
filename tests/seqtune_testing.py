"""Helpers shared by test modules (importable because tests/conftest.py appends tests/ to sys.path)."""
from __future__ import annotations

from typing import Any

from framework.data.chat import encode_chats
from framework.types import IGNORE_INDEX, Sample


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
