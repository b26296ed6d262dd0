"""Truncation strategies: bound a tokenized row to max_seq_length tokens.

Each is called only for rows longer than max_seq_length and returns (input_ids, labels) or None to drop
the row. A ValueError means "refuse this row"; the pipeline names the row. After any strategy a
row with no trainable token left is dropped, and the first label of a cut row is masked.
"""
from __future__ import annotations

from framework import IGNORE_INDEX, hookimpl


def right(input_ids: list[int], labels: list[int], max_seq_length: int):
    """Keep the first max_seq_length tokens (open-instruct's behaviour: a cut answer loses its EOS)."""
    return input_ids[:max_seq_length], labels[:max_seq_length]


def left(input_ids: list[int], labels: list[int], max_seq_length: int):
    """Keep the last max_seq_length tokens: the final answer survives, the start of the context goes."""
    return input_ids[-max_seq_length:], labels[-max_seq_length:]


def drop(input_ids: list[int], labels: list[int], max_seq_length: int):
    """Drop over-length rows whole: nothing is trained on a partial conversation."""
    return None


def refuse(input_ids: list[int], labels: list[int], max_seq_length: int):
    """Stop preprocessing at the first over-length row (for data that must fit exactly)."""
    raise ValueError(f"has {len(input_ids):,} tokens, more than max_seq_length {max_seq_length:,} "
                     "(truncation: raise); raise max_seq_length or choose another truncation")


def turns(input_ids: list[int], labels: list[int], max_seq_length: int):
    """Drop whole trailing turns: keep up to the end of the last trained turn that fits whole, so
    every kept assistant turn is complete with its end-of-turn token (None if none fits)."""
    # A trained run ends at t-1 when token t is untrained; the row is longer than max_seq_length here.
    ends = [t for t in range(1, max_seq_length + 1) if labels[t - 1] != IGNORE_INDEX and labels[t] == IGNORE_INDEX]
    return (input_ids[:ends[-1]], labels[:ends[-1]]) if ends else None


@hookimpl
def seqtune_register_truncation():
    return {"right": right, "left": left, "drop": drop, "raise": refuse, "turns": turns}
