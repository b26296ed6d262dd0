"""`seqtune plan`: memory and data loss over candidate max_seq_length values, and a recommendation."""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any, Callable, Optional

from framework.config.schema import Component
from framework.data.tokenize import truncate_row
from framework.plan import efficiency
from framework.types import Sample

CANDIDATES = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
REMEDIES = (  # what a user can change when nothing fits, as plan_memory keywords
    ("model.gradient_checkpointing=true", {"gradient_checkpointing": True}),
    ("launch.deepspeed={zero_stage: 3}", {"zero_stage": 3}),
    ("launch.deepspeed={zero_stage: 3, offload_optimizer: true, offload_params: true}",
     {"zero_stage": 3, "offload_optimizer": True, "offload_params": True}),
    ("train.per_device_batch_size=1", {"micro_batch": 1}),
)


@dataclass
class LengthRow:
    seq_len: int
    memory_gib: float
    fits: bool
    rows_truncated: Optional[int] = None
    rows_dropped: Optional[int] = None
    trainable_lost: Optional[float] = None  # share of trainable tokens lost
    efficiency: Optional[float] = None  # packing efficiency with the recipe's strategy


def data_at(samples: list[Sample], truncate: Callable, packing: Any, batch: int, seq_len: int,
            seed: int) -> tuple[int, int, float, float]:
    """(rows truncated, rows dropped, share of trainable tokens lost, packing efficiency) at seq_len."""
    truncated = dropped = lost = total = 0
    lengths = []
    for sample in samples:
        kept = truncate_row(sample, truncate, seq_len)
        total += sample.num_trainable
        if kept is None:
            dropped, lost = dropped + 1, lost + sample.num_trainable
            continue
        truncated += len(kept.input_ids) < len(sample.input_ids)
        lost += sample.num_trainable - kept.num_trainable
        lengths.append(len(kept.input_ids))
    plan = packing.plan(lengths, batch, seq_len, seed) if lengths else []
    return truncated, dropped, lost / max(total, 1), efficiency(plan, lengths, packing.pad_to_multiple_of, False)


def untruncated_samples(loaded: Any, parts: Any, tokenizer: Any, count: int) -> list[Sample]:
    """Up to `count` rows of the recipe's data, tokenized without any cut (a seeded sample)."""
    from framework.data import prepare_data

    recipe = loaded.recipe
    whole = dataclasses.replace(recipe.data, max_seq_length=1 << 30, truncation=Component("right"))
    data = prepare_data(dataclasses.replace(recipe, data=whole), parts.loaders, parts.formats,
                        lambda ids, labels, n: (ids, labels), tokenizer)
    indices = list(range(len(data.dataset)))
    random.Random(recipe.seed).shuffle(indices)
    return [row[0] for row in data.take([[i] for i in sorted(indices[:count])])]


def recommend(rows: list[LengthRow], keep: float = 0.99) -> tuple[Optional[int], Optional[int]]:
    """(the largest length that fits, the smallest that keeps at least `keep` of trainable tokens)."""
    fitting = [r.seq_len for r in rows if r.fits]
    keeping = [r.seq_len for r in rows if r.trainable_lost is not None and r.trainable_lost <= 1 - keep]
    return (max(fitting) if fitting else None), (min(keeping) if keeping else None)
