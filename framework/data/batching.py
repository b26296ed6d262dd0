"""The batch plan: each epoch's micro-batches per rank and the exact optimizer step count, before
the run starts.

Every epoch is planned up front (a strategy may pack differently per epoch seed), so the
scheduler is sized from the real number of optimizer steps, and every rank gets the same number
of micro-batches: a rank short of one runs an empty micro-batch (no trainable tokens) instead of
leaving the others waiting in a collective.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from framework.types import Piece

MicroBatch = list[list[Piece]]


@dataclass
class BatchPlan:
    epochs: list[list[Optional[MicroBatch]]]  # this rank's micro-batches per epoch; None = empty
    steps_per_epoch: list[int]
    total_steps: int
    micro_batches: int  # over all ranks, first epoch
    efficiency: float  # real tokens / token slots computed, first epoch


def shard(plan: list[MicroBatch], rank: int, world: int) -> list[Optional[MicroBatch]]:
    """Rank `rank`'s micro-batches, round-robin, padded with None so every rank has as many."""
    mine: list[Optional[MicroBatch]] = list(plan[rank::world])
    return mine + [None] * (math.ceil(len(plan) / world) - len(mine))


def piece_length(piece: Piece, lengths: list[int]) -> int:
    return lengths[piece] if isinstance(piece, int) else piece[2] - piece[1]


def efficiency(plan: list[MicroBatch], lengths: list[int], multiple: int, padding_free: bool) -> float:
    """Real tokens over the token slots the model computes (padding included)."""
    real = slots = 0
    for micro_batch in plan:
        rows = [sum(piece_length(p, lengths) for p in row) for row in micro_batch]
        width = sum(rows) if padding_free else -(-max(rows) // multiple) * multiple
        real, slots = real + sum(rows), slots + (width if padding_free else width * len(rows))
    return real / max(slots, 1)


def padding_free_layout(packing: Any, asked: bool) -> bool:
    """Whether micro-batches become one padding-free row: asked for (flash-attention takes packed
    sequences only that way) and declared possible by the strategy (`supports_padding_free`)."""
    return asked and bool(getattr(packing, "supports_padding_free", False))


def plan_batches(packing: Any, lengths: list[int], train: Any, max_seq_length: int, seed: int,
                 rank: int = 0, world: int = 1, padding_free: bool = False) -> BatchPlan:
    """Plan `train.epochs` epochs, or as many as `train.max_steps` needs. `padding_free` is asked
    for; only a strategy that supports it lays micro-batches out that way."""
    padding_free = padding_free_layout(packing, padding_free)
    epochs, steps, first = [], [], None
    while True:
        plan = packing.plan(lengths, train.per_device_batch_size, max_seq_length, seed + len(epochs))
        first = first or plan
        epochs.append(shard(plan, rank, world))
        steps.append(math.ceil(len(epochs[-1]) / train.gradient_accumulation_steps))
        enough = sum(steps) >= train.max_steps if train.max_steps else len(epochs) == train.epochs
        if enough or steps[-1] == 0:
            break
    total = min(train.max_steps, sum(steps)) if train.max_steps else sum(steps)
    return BatchPlan(epochs, steps, total, len(first),
                     efficiency(first, lengths, getattr(packing, "pad_to_multiple_of", 1), padding_free))
