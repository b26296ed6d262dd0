"""How much GPU memory a training run needs, per GPU, before anything is loaded.

Pure Python and cheap to import (no torch, no transformers): `seqtune check` and `seqtune plan` use it
to say whether a recipe fits a GPU and how long max_seq_length can be. Every figure is an estimate
from the model's shape (`shapes.py`) and one frozen `MemorySettings`; each part of the estimate says
how it was computed:

- model states (weights, gradients, optimizer states) and working buffers: `model_states.py`, after
  the ZeRO paper (Rajbhandari et al., 2020);
- activations and the logits/loss buffers: `activations.py`, after Korthikanti et al. (2022);
- under sequence parallelism, the all-to-all copies around each attention kernel: `sequence_parallel.py`;
- for an objective that generates its completions, the generation phase between steps (KV cache,
  prefill, sampling) as far as it needs more than the training step's transient parts: `generation.py`;
- overhead: a fixed amount (CUDA context, workspaces) plus a share of the rest (fragmentation).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from framework.estimation.activations import activations, logits
from framework.estimation.generation import generation
from framework.estimation.model_states import buffers, model_states, reference_weights
from framework.estimation.sequence_parallel import all_to_all
from framework.estimation.settings import GIB, MemorySettings
from framework.estimation.shapes import ModelShape

PART_LABELS = {"weights": "weights", "gradients": "gradients", "optimizer_states": "optimizer states",
               "activations": "activations", "logits": "logits + loss", "buffers": "buffers",
               "all_to_all": "all-to-all buffers", "generation": "generation", "overhead": "overhead"}
# a row only for runs that have it (sequence parallelism, an objective that generates), even at 0 GiB
SHOWN_WHEN_USED = {"all_to_all", "generation"}


@dataclass
class MemoryEstimate:
    """Bytes per GPU, by part. `details` says how each part was computed; `notes` lists settings the
    estimate ignored or could not account for. `generation` is what the generation phase between steps
    needs beyond the training step's transient parts, so the total is the larger phase's peak."""

    weights: int
    gradients: int
    optimizer_states: int
    activations: int
    logits: int
    buffers: int
    overhead: int
    all_to_all: int = 0
    generation: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def model_states(self) -> int:
        return self.weights + self.gradients + self.optimizer_states

    @property
    def total(self) -> int:
        return sum(getattr(self, part) for part in PART_LABELS)

    @property
    def total_gib(self) -> float:
        return self.total / GIB

    def fits(self, gpu_gib: float) -> bool:
        """Whether it fits a GPU with `gpu_gib` GiB (e.g. framework.estimation.hardware.GPUS[key].memory_gib)."""
        return self.total <= gpu_gib * GIB

    def rows(self) -> list[tuple[str, str, str]]:
        """(part, size in GiB, how it was computed) for a table, ending with the total."""
        rows = [(label, f"{getattr(self, part) / GIB:.2f} GiB", self.details.get(part, ""))
                for part, label in PART_LABELS.items() if part not in SHOWN_WHEN_USED or part in self.details]
        return rows + [("total", f"{self.total_gib:.2f} GiB", "per GPU")]


def estimate_memory(shape: ModelShape, settings: MemorySettings) -> MemoryEstimate:
    """The memory one GPU needs for a training run of this shape with these settings."""
    notes: list[str] = []
    lora_params = settings.trainable_lora(shape)
    if settings.lora is not None and settings.lora.unknown_modules(shape):
        notes.append(f"lora.target_modules: {', '.join(settings.lora.unknown_modules(shape))} not known to the "
                     "planner; counted as no parameters")
    states, details = model_states(shape, settings, lora_params, notes)
    if settings.reference_copy:
        copy, how = reference_weights(shape, settings)
        states["weights"] += copy
        details["weights"] += f" + the frozen reference model: {how}"
    parts = {**states, "buffers": buffers(shape, settings, lora_params), "activations": activations(shape, settings),
             "logits": logits(shape, settings), "all_to_all": all_to_all(shape, settings)}
    for name in ("buffers", "activations", "logits", "all_to_all"):
        parts[name], details[name] = parts[name]
    if not parts["all_to_all"]:
        del details["all_to_all"]
    if settings.max_new_tokens:
        parts["generation"], details["generation"] = generation(shape, settings, parts)
    rest = sum(parts.values())
    overhead = int(settings.overhead_gib * GIB) + math.ceil(settings.overhead_fraction * rest)
    details["overhead"] = (f"{settings.overhead_gib:g} GiB fixed (CUDA context, workspaces) + "
                           f"{settings.overhead_fraction:.0%} of the rest (allocator fragmentation)")
    recorded = {**asdict(settings), "lora_trainable_params": lora_params, "num_parameters": shape.num_parameters}
    return MemoryEstimate(**parts, overhead=overhead, settings=recorded, details=details, notes=notes)


def longest_fitting(estimate_at: Callable[[int], MemoryEstimate], gpu_gib: float, *, multiple_of: int = 64,
                    limit: int = 1 << 20) -> int:
    """The largest max_seq_length, a multiple of `multiple_of` up to `limit`, whose estimate fits
    `gpu_gib`; 0 if none does. Memory grows with the length, so a bisection finds it."""
    lo, hi = 0, limit // multiple_of  # in units of multiple_of: lo fits (0 trivially), hi+1 does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate_at(mid * multiple_of).fits(gpu_gib):
            lo = mid
        else:
            hi = mid - 1
    return lo * multiple_of


def fewest_fitting(estimate_at: Callable[[int], MemoryEstimate], gpu_gib: float, *, multiple_of: int = 1,
                   limit: int = 64) -> tuple[int, MemoryEstimate] | None:
    """The fewest processes, a multiple of `multiple_of` up to `limit`, whose GPUs of `gpu_gib` each fit
    `estimate_at(processes)`, and that estimate; None if none do. Counted up, not bisected: one process
    needs no gradient buckets (less than two under DDP), ZeRO-3 on one keeps whole layers gathered."""
    for count in range(multiple_of, limit + 1, multiple_of):
        estimate = estimate_at(count)
        if estimate.fits(gpu_gib):
            return count, estimate
    return None
