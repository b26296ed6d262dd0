"""Small types shared by the engine and plugins (part of the public surface)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Union

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100  # label value that the loss skips (masked prompt, padding)


@dataclass
class Sample:
    """One tokenized row: `labels[i]` is the target for `input_ids[i]` (the model shifts)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def num_trainable(self) -> int:
        return len(self.labels) - self.labels.count(IGNORE_INDEX)


Piece = Union[int, tuple[int, int, int]]  # a sample index, or (index, start, stop): a slice of one
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")  # collate keys the model receives


class Packing(Protocol):
    """What a packing factory returns: a micro-batch plan, a collate function, and what the planner
    and the dry run read about its layout."""

    pad_to_multiple_of: int  # rows are padded to a multiple of this (1: no rounding)
    supports_padding_free: bool  # whether collate honours padding_free (one row, no padding)
    packs_rows: bool  # whether a row holds several samples, filled up to max_seq_length

    def plan(self, lengths: list[int], batch_size: int, max_seq_length: int, seed: int
             ) -> list[list[list[Piece]]]:
        """Micro-batches of rows of pieces; deterministic for a seed (the engine passes seed + epoch)."""

    def collate(self, rows: list[list[Sample]], pad_token_id: int, padding_free: bool = False
                ) -> dict[str, torch.Tensor]:
        """One micro-batch as tensors: the MODEL_INPUTS it uses, `labels`, and `num_tokens` (the
        real, non-padding tokens). `padding_free` asks for one row without padding (flash-attention)."""


@dataclass
class RunInfo:
    """What lifecycle hooks learn about a run at `seqtune_train_start`."""

    run_name: str
    output_dir: str
    recipe: dict[str, Any]
    total_steps: int
    steps_per_epoch: int
    num_rows: int
    num_parameters: int
    start_step: int = 0  # > 0 when the run resumed from a checkpoint
    extra: dict[str, Any] = field(default_factory=dict)
