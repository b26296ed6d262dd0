"""Small types shared by the engine and plugins (part of the public surface)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

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


class Packing(Protocol):
    """What a packing factory returns: a micro-batch plan and a collate function."""

    def plan(self, lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
        """Group row indices into micro-batches; must be deterministic for a seed."""

    def collate(self, rows: list[Sample], pad_token_id: int) -> dict[str, torch.Tensor]:
        """Turn one micro-batch of rows into model inputs with `labels`."""


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
    extra: dict[str, Any] = field(default_factory=dict)
