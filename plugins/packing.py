"""Packing strategies: how tokenized rows become micro-batches."""
from __future__ import annotations

import random
from typing import Optional

from framework import IGNORE_INDEX, Sample, hookimpl


class PadToLongest:
    """No packing: shuffled rows, padded to the longest row of each micro-batch."""

    def __init__(self, pad_to_multiple_of: Optional[int] = None):
        self.multiple = pad_to_multiple_of or 1

    def plan(self, lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
        order = list(range(len(lengths)))
        random.Random(seed).shuffle(order)
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def collate(self, rows: list[Sample], pad_token_id: int):
        import torch

        longest = max(len(r.input_ids) for r in rows)
        width = -(-longest // self.multiple) * self.multiple
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row.input_ids)
            ids[i, :n] = torch.tensor(row.input_ids)
            labels[i, :n] = torch.tensor(row.labels)
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def none(*, pad_to_multiple_of: Optional[int] = None) -> PadToLongest:
    return PadToLongest(pad_to_multiple_of)


@hookimpl
def seqtune_register_packing():
    return {"none": none}
