"""One optimizer step, in parts: which micro-batches it takes, their tensors on the device, the
forward and backward of each, and the update itself behind the one check all ranks share."""
from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from framework.data.batching import BatchPlan, MicroBatch
from framework.errors import RunStopped
from framework.launch.accelerator import is_deepspeed
from framework.training.checkpoints import TrainerState, find_resume
from framework.training.loss import scale_loss, trainable_tokens
from framework.types import IGNORE_INDEX, Sample

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class StepPlan:
    """The micro-batches of one optimizer step, and where they sit in their epoch."""

    epoch: int
    micro_batches: list[Optional[MicroBatch]]  # None: an empty filler for a rank that ran out
    done: int  # micro-batches of the epoch done after this step
    epoch_length: int

    @property
    def progress(self) -> float:
        """Epochs done after this step, as a fraction."""
        return self.epoch + self.done / self.epoch_length


def remaining_steps(plan: BatchPlan, state: TrainerState, accumulation: int) -> Iterator[StepPlan]:
    """Every optimizer step from where `state` stands (a resumed run continues at its micro-batch)."""
    for epoch in range(state.epoch, len(plan.epochs)):
        micro_batches = plan.epochs[epoch]
        first_of_epoch = state.micro_batch if epoch == state.epoch else 0
        for first in range(first_of_epoch, len(micro_batches), accumulation):
            group = micro_batches[first:first + accumulation]
            yield StepPlan(epoch, group, first + len(group), len(micro_batches))


@dataclass
class Batch:
    """A micro-batch's tensors on the device, with its counts taken on the CPU before the copy, so
    the loop never waits on the device for them."""

    tensors: dict[str, Any]
    tokens: int  # real (non-padding) tokens
    trainable: int  # tokens the loss trains
    slots: int  # token positions computed, padding included
    attention_pairs: int = 0  # sum of length^2 over the documents: what causal attention computes
    units: int = 0  # what train.loss_reduction divides by (the objective's: trainable tokens, pairs)
    rows: list[int] = field(default_factory=list)  # the data rows it holds, in order (for cached references)


def collate(prep: Any, micro_batch: Optional[MicroBatch], device: Any) -> Batch:
    """A micro-batch's tensors on the device; an empty one (None) when this rank has run out."""
    pad = prep.tokenizer.pad_token_id
    rows = prep.data.take(micro_batch) if micro_batch is not None else [[Sample([pad], [IGNORE_INDEX])]]
    tensors = prep.objective.collate(rows, prep.packing, pad, prep.padding_free)
    tokens = int(tensors.pop("num_tokens")) if micro_batch is not None else 0  # the filler is not data
    pairs = sum(n ** 2 for row in rows for sample in row for n in (sample.sequences or [len(sample.input_ids)]))
    counts = (tokens, int(trainable_tokens(tensors["labels"])), tensors["input_ids"].numel(),
              pairs if micro_batch is not None else 0, prep.objective.units(rows, tensors))
    indices = [piece if isinstance(piece, int) else piece[0] for row in micro_batch or [] for piece in row]
    on_device = {key: value.to(device, non_blocking=True) for key, value in tensors.items()}
    on_device["token_capacity"] = prep.token_capacity  # a Python int: what ZeRO-3 sizes chunk counts by
    return Batch(on_device, *counts, indices)


def forward_backward(run: Any, batch: Batch, step_units: Any, n_micro: int, last: bool) -> tuple[Any, dict]:
    """The micro-batch's loss and gradients, scaled to the recipe's normalisation; its summed loss and
    the objective's metric sums."""
    train = run.loaded.recipe.train
    accelerator = run.accelerator
    if run.reference is not None:
        batch.tensors["reference_logps"] = run.reference(batch)
    with _accumulating(accelerator, run.model, last):
        loss_sum, metrics = run.loss(run.model, batch.tensors)
        loss = scale_loss(loss_sum, batch.units, step_units, n_micro, train.loss_reduction,
                          train.gradient_accumulation_steps, accelerator.num_processes)
        accelerator.backward(loss * _deepspeed_accumulation(accelerator, run.model))
    return loss_sum.detach(), {key: value.detach() for key, value in metrics.items()}


def optimizer_step(run: Any, step_loss: Any, requested: Optional[int]) -> tuple[Any, int]:
    """Clip, step and schedule, after the one collective of the step: is the loss finite on every
    rank, and did any rank get a stop signal. Returns (grad norm, that signal or 0)."""
    finite, stop = _step_checks(run.accelerator, step_loss, requested)
    if not finite:
        raise RunStopped(_non_finite_message(run.state.step + 1, run.output_dir), exit_code=1)
    clip = run.loaded.recipe.train.clip_grad_norm or math.inf
    grad_norm = run.accelerator.clip_grad_norm_(run.model.parameters(), clip)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm, stop


def _accumulating(accelerator: Any, model: Any, last: bool) -> Any:
    """No gradient sync before a step's last micro-batch. DeepSpeed instead learns where the window
    ends (it steps itself there; ZeRO-2/3 have no no_sync)."""
    if is_deepspeed(accelerator):
        accelerator.gradient_state._set_sync_gradients(last)
        return contextlib.nullcontext()
    return contextlib.nullcontext() if last else accelerator.no_sync(model)


def _deepspeed_accumulation(accelerator: Any, model: Any) -> int:
    """DeepSpeed divides every micro-batch's loss by its accumulation count; the loss is already
    normalised for the whole step, so that division is undone (with the engine's own count)."""
    return model.gradient_accumulation_steps() if is_deepspeed(accelerator) else 1


def _step_checks(accelerator: Any, step_loss: Any, signum: Optional[int]) -> tuple[bool, int]:
    """(is the step's loss finite on every rank, the stop signal any rank received or 0)."""
    import torch

    asked = [float(signum == s) for s in STOP_SIGNALS]
    flags = torch.tensor([float(step_loss), *asked], dtype=torch.float64, device=accelerator.device)
    loss, *received = accelerator.reduce(flags, "sum").tolist()
    return math.isfinite(loss), next((s for s, n in zip(STOP_SIGNALS, received) if n), 0)


def _non_finite_message(step: int, output_dir: Path) -> str:
    found = find_resume("auto", output_dir)
    last = f"the last good checkpoint is {found}" if found else "no checkpoint was written yet"
    return (f"the loss is not finite (nan or inf) at step {step:,}; stopped without saving, {last}; "
            "lower optimizer.lr, set train.clip_grad_norm, or check the data")
