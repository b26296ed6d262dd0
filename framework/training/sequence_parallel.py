"""Sequence parallelism on the engine's side: which processes share a sequence, and how a micro-batch is
split between them (the attention itself is framework/model/ulysses.py).

The processes form groups of `launch.sequence_parallel` consecutive ranks (on one machine where a machine
holds whole groups: the all-to-alls stay inside it). Every rank of a group collates the same micro-batch;
the whole rows' positions are computed and their labels shifted once, the rows are padded to a multiple
of N (a document of its own, nothing trained), and each rank keeps its N-th of every row. Counts (tokens,
trainable tokens, the loss's units) are the group's first rank's alone, so sums over ranks count every
token once; each rank's loss is the sum over its own tokens, so the sum over ranks is the whole loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from framework.model.ulysses import Shards
from framework.types import IGNORE_INDEX

WHOLE_ROW_KEYS = ("attention_mask", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


@dataclass
class Groups:
    """This process's sequence-parallel group, and the data-parallel layout over the groups."""

    size: int = 1  # processes per group (N)
    rank: int = 0  # this process's place in its group
    index: int = 0  # which group: the data-parallel rank
    count: int = 1  # how many groups: the data-parallel world
    group: Any = None  # the torch process group of this process's group (None when size is 1)

    @property
    def counts(self) -> bool:
        """Whether this rank reports its micro-batch's counts (one rank per group does)."""
        return self.rank == 0


def make_groups(rank: int, world: int, size: int) -> Groups:
    """The groups of `size` consecutive ranks; every process must call it (each group is created by all)."""
    if size == 1:
        return Groups(1, 0, rank, world, None)
    import torch.distributed as dist

    mine = None
    for first in range(0, world, size):
        group = dist.new_group(list(range(first, first + size)))
        if first <= rank < first + size:
            mine = group
    return Groups(size, rank % size, rank // size, world // size, mine)


def split(tensors: dict[str, Any], groups: Groups, pad_token_id: int, label_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """This rank's part of a collated micro-batch: input_ids and position_ids split, `labels` and the
    objective's other per-target keys (`label_keys`) shifted once over the whole row then split, as
    `shift_<key>`. The whole rows' layout travels as `whole_positions` (and flash-attention's boundaries)."""
    import torch

    ids = tensors["input_ids"]
    rows, width = ids.shape
    n = groups.size
    extra = -width % n
    positions = tensors.get("position_ids")
    if positions is None:  # rows of one document each (no packing): transformers' default positions
        positions = torch.arange(width).expand(rows, width)
    positions = torch.cat([positions, torch.arange(extra).expand(rows, extra)], 1)  # the padding: its own document
    part = slice(groups.rank * (width + extra) // n, (groups.rank + 1) * (width + extra) // n)
    out = {key: value for key, value in tensors.items() if key not in WHOLE_ROW_KEYS and key not in label_keys}
    out["input_ids"] = torch.nn.functional.pad(ids, (0, extra), value=pad_token_id)[:, part].contiguous()
    out["position_ids"] = positions[:, part].contiguous()
    for key in ("labels", *label_keys):
        shifted = torch.full((rows, width + extra), IGNORE_INDEX, dtype=tensors[key].dtype)
        shifted[:, :width - 1] = tensors[key][:, 1:]
        out[f"shift_{key}"] = shifted[:, part].contiguous()
    del out["labels"]  # a loss that shifts labels itself would shift them twice: it finds none
    out.update(_layout(positions, width))
    return out


def _layout(positions: Any, width: int) -> dict[str, Any]:
    """The whole rows' positions, and every document's boundaries with all rows end to end (flash).
    Rows that are one document each but for the padding to a multiple of N keep sdpa's mask-free causal
    kernel: that padding comes after every real token, so what it attends to changes nothing trained."""
    import torch

    flat = positions.reshape(-1)
    starts = (flat == 0).nonzero().flatten()
    cu_seq_lens = torch.cat([starts, torch.tensor([flat.numel()])]).to(torch.int32)
    return {"whole_positions": positions, "whole_cu_seq_lens": cu_seq_lens,
            "whole_max_length": int((cu_seq_lens[1:] - cu_seq_lens[:-1]).max()),
            "whole_one_document_per_row": int((positions[:, :width] == 0).sum()) == positions.size(0)}


def attach(on_device: dict[str, Any], groups: Groups, kernel: str) -> dict[str, Any]:
    """The micro-batch with its `sequence_parallel` shards (what the attention wrapper reads), made of
    the whole-row layout `split` left (now on the device)."""
    on_device["sequence_parallel"] = Shards(groups.group, groups.size, kernel, on_device.pop("whole_positions"),
                                            on_device.pop("whole_cu_seq_lens"), on_device.pop("whole_max_length"),
                                            on_device.pop("whole_one_document_per_row"))
    return on_device
