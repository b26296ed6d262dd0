"""Truncation strategies: bound a tokenized row to max_seq_length tokens."""
from __future__ import annotations

from framework import hookimpl


def right(input_ids: list[int], labels: list[int], max_len: int) -> tuple[list[int], list[int]]:
    """Keep the first max_len tokens (open-instruct's behaviour: a cut answer loses its EOS)."""
    return input_ids[:max_len], labels[:max_len]


@hookimpl
def seqtune_register_truncation():
    return {"right": right}
