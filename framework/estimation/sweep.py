"""The max_seq_length sweep behind `seqtune plan`: memory and data loss over candidate lengths, the
remedies when the recipe's own length does not fit, and a recommendation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from framework.data.batching import efficiency
from framework.data.tokenize import KEEP, truncate_row
from framework.types import Sample

CANDIDATES = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
SAVERS = (  # what saves memory without changing a number of the result (the loss's chunking: from its plugin)
    ("model.gradient_checkpointing=true", {"gradient_checkpointing": True}),
    ("model.activation_offloading=true", {"activation_offloading": True}),
)
REMEDIES = (  # what else a user can change when nothing fits: the override, and the MemorySettings it changes
    ("launch.deepspeed={zero_stage: 3}", {"zero_stage": 3}),
    ("launch.deepspeed={zero_stage: 3, offload_optimizer: true, offload_params: true}",
     {"zero_stage": 3, "offload_optimizer": True, "offload_params": True}),
    ("train.per_device_batch_size=1", {"micro_batch": 1}),
)


@dataclass
class LengthRow:
    max_seq_length: int
    memory_gib: float
    fits: bool
    rows_truncated: Optional[int] = None
    rows_dropped: Optional[int] = None
    trainable_lost: Optional[float] = None  # share of trainable tokens lost
    efficiency: Optional[float] = None  # packing efficiency with the recipe's strategy
    own: bool = False  # the recipe's own max_seq_length


def lengths_for(own: int) -> list[int]:
    """The candidates and the recipe's own length, in order: what the recipe does is always shown."""
    return sorted({*CANDIDATES, own})


def data_at(samples: list[Sample], truncate: Callable, packing: Any, batch: int, max_seq_length: int,
            seed: int) -> tuple[int, int, float, float]:
    """(rows truncated, rows dropped, share of trainable tokens lost, packing efficiency) at a length."""
    truncated = dropped = lost = total = 0
    lengths = []
    for sample in samples:
        kept = truncate_row(sample, truncate, max_seq_length)
        total += sample.num_trainable
        if kept is None:
            dropped, lost = dropped + 1, lost + sample.num_trainable
            continue
        truncated += len(kept.input_ids) < len(sample.input_ids)
        lost += sample.num_trainable - kept.num_trainable
        lengths.append(len(kept.input_ids))
    plan = packing.plan(lengths, batch, max_seq_length, seed) if lengths else []
    return truncated, dropped, lost / max(total, 1), efficiency(plan, lengths, packing.pad_to_multiple_of, False)


def recommend(rows: list[LengthRow], keep: float = KEEP) -> tuple[Optional[int], Optional[int]]:
    """(the largest length that fits, the smallest that keeps at least `keep` of trainable tokens)."""
    fitting = [r.max_seq_length for r in rows if r.fits]
    keeping = [r.max_seq_length for r in rows if r.trainable_lost is not None and r.trainable_lost <= 1 - keep]
    return (max(fitting) if fitting else None), (min(keeping) if keeping else None)
