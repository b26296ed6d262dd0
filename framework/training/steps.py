"""One optimizer step, in parts: which micro-batches it takes, their tensors on the device, the
forward and backward of each, and the update itself behind the one check all ranks share."""
from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from framework.data.batching import BatchPlan, MicroBatch
from framework.errors import RunStopped
from framework.launch.accelerator import is_deepspeed
from framework.model.heads import trained_positions
from framework.training.checkpoints import TrainerState, find_resume
from framework.training.loss import scale_loss, trainable_tokens
from framework.training.sequence_parallel import attach, split
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
    whole_units: int = 0  # the micro-batch's units over its whole sequence-parallel group (for loss_reduction mean)


def collate(prep: Any, micro_batch: Optional[MicroBatch], device: Any, reference: Any = None) -> Batch:
    """A micro-batch's tensors on the device; an empty one (None) when this rank has run out. Everything
    read from them (counts, where the trained tokens are, a cached reference's numbers) is taken here, on
    the host, before the copy: the device is never asked. Under sequence parallelism the tensors are this
    rank's part, and the counts the group's first rank's alone (see framework.training.sequence_parallel)."""
    pad, groups = prep.tokenizer.pad_token_id, prep.groups
    rows = prep.data.take(micro_batch) if micro_batch is not None else [[Sample([pad], [IGNORE_INDEX])]]
    tensors = prep.objective.collate(rows, prep.packing, pad, prep.padding_free)
    tokens = int(tensors.pop("num_tokens")) if micro_batch is not None else 0  # the filler is not data
    pairs = sum(n ** 2 for row in rows for sample in row for n in (sample.sequences or [len(sample.input_ids)]))
    units = prep.objective.units(rows, tensors)
    counts = (tokens, int(trainable_tokens(tensors["labels"])), tensors["input_ids"].numel(),
              pairs if micro_batch is not None else 0, units)
    indices = [piece if isinstance(piece, int) else piece[0] for row in micro_batch or [] for piece in row]
    if groups.size > 1:
        tensors = split(tensors, groups, pad, getattr(prep.objective, "label_keys", ()))
        tensors["trained_positions"] = trained_positions(tensors["shift_labels"], shifted=True)
        counts = counts if groups.counts else (0,) * len(counts)
    else:
        tensors["trained_positions"] = trained_positions(tensors["labels"])
    if reference is not None and reference.table is not None:
        tensors["reference_logps"] = reference.table[indices]
    on_device = to_device(tensors, device)
    on_device["token_capacity"] = prep.token_capacity  # a Python int: what ZeRO-3 sizes chunk counts by
    if groups.size > 1:
        attach(on_device, groups, prep.attention)
    return Batch(on_device, *counts, indices, whole_units=units)


def to_device(tensors: dict[str, Any], device: Any) -> dict[str, Any]:
    """Tensors copied to the device without the host waiting (on a GPU: from pinned memory, as a
    copy from pageable memory makes the host wait); other values (Python ints) as they are."""
    import torch

    pin = getattr(device, "type", str(device)) == "cuda"
    return {key: (value.pin_memory() if pin else value).to(device, non_blocking=True)
            if isinstance(value, torch.Tensor) else value for key, value in tensors.items()}


@dataclass
class Step:
    """An optimizer step's micro-batches, on the device, and their units (a device tensor of this rank's)."""

    plan: StepPlan
    batches: list[Batch]
    units: Any


def prepared_steps(run: Any, steps: Iterator[StepPlan]) -> Iterator[Step]:
    """Each step with its micro-batches collated: the next step's in a worker thread while this one trains."""
    import torch

    def prepare(step: StepPlan) -> Step:
        batches = [collate(run.prep, pieces, run.accelerator.device, run.reference) for pieces in step.micro_batches]
        units = torch.tensor(float(sum(batch.units for batch in batches)), dtype=torch.float64)
        return Step(step, batches, to_device({"units": units}, run.accelerator.device)["units"])

    return prefetched(steps, prepare)


def prefetched(items: Iterator, make: Callable[[Any], Any]) -> Iterator:
    """make(item) for every item, each made in a worker thread one item ahead of its use."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="seqtune-collate") as pool:
        pending = None
        for item in items:
            ahead = pool.submit(make, item)
            if pending is not None:
                yield pending.result()
            pending = ahead
        if pending is not None:
            yield pending.result()


def forward_backward(run: Any, batch: Batch, step_units: Any, n_micro: int, last: bool) -> tuple[Any, dict]:
    """The micro-batch's loss and gradients, scaled to the recipe's normalisation; its summed loss and
    the objective's metric sums."""
    train = run.loaded.recipe.train
    accelerator = run.accelerator
    if run.reference is not None and run.reference.live is not None:
        batch.tensors["reference_logps"] = run.reference.live(batch.tensors)
    with _accumulating(accelerator, run.model, last):
        loss_sum, metrics = run.loss(run.model, batch.tensors)
        loss = scale_loss(loss_sum, batch.whole_units, step_units, n_micro, train.loss_reduction,
                          train.gradient_accumulation_steps, accelerator.num_processes, run.prep.groups.size)
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

    flags = torch.zeros(1 + len(STOP_SIGNALS), dtype=torch.float64, device=accelerator.device)
    flags[0] = step_loss  # on the device: the one read back is the reduced flags'
    if signum in STOP_SIGNALS:
        flags[1 + STOP_SIGNALS.index(signum)] = 1.0
    loss, *received = accelerator.reduce(flags, "sum").tolist()
    return math.isfinite(loss), next((s for s, n in zip(STOP_SIGNALS, received) if n), 0)


def _non_finite_message(step: int, output_dir: Path) -> str:
    found = find_resume("auto", output_dir)
    last = f"the last good checkpoint is {found}" if found else "no checkpoint was written yet"
    return (f"the loss is not finite (nan or inf) at step {step:,}; stopped without saving, {last}; "
            "lower optimizer.lr, set train.clip_grad_norm, or check the data")
