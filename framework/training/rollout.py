"""Online objectives (GRPO): before a step's forward and backward, each micro-batch's prompts become
the completions the model samples for them now, scored by the objective's rewards.

An objective is online when it has `rollout(model, tensors, tokenizer, seed, where) -> tensors` (see
hookspecs.seqtune_register_objectives): the engine calls it with the model unwrapped (no DDP or
DeepSpeed hooks: generation computes no gradients), under the run's autocast, with a seed fixed by the
run's seed, the step and the rank (a resumed run samples what the uninterrupted one did), and gives
its result to the loss as any micro-batch: on the device, with its counts taken on the host.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import fields
from typing import Any

from framework.model.heads import trained_positions
from framework.training.loss import trainable_tokens
from framework.training.steps import Batch, Step, to_device


def is_online(objective: Any) -> bool:
    return callable(getattr(objective, "rollout", None))


class Rollouts:
    """Each optimizer step's completions; with the objective's `iterations` above 1 the batch plan repeats
    a step's micro-batches that many steps in a row (framework.data.batching), and they train on the one
    generation, against the log-probabilities of the policy that sampled it (`old_logps`)."""

    def __init__(self, run: Any):
        self.iterations = getattr(run.prep.objective, "iterations", 1)
        self.span = run.loaded.recipe.train.gradient_accumulation_steps * self.iterations
        self.key, self.last = None, None
        if run.saved_rollout is not None:  # resumed between two steps of one generation: train on it again
            self.key, self.last = _restored(run.saved_rollout, run.accelerator.device)

    def kept(self) -> dict | None:
        """What a checkpoint keeps of this rank's last generation when later steps may train on it too
        (iterations above 1), as tensors and plain values: a run stopped between those steps resumes on
        the same completions and old log-probabilities, not on a new generation from the updated weights."""
        if self.iterations == 1 or self.last is None:
            return None
        batches = [{**{f.name: getattr(batch, f.name) for f in fields(batch)}, "tensors": _on_host(batch.tensors)}
                   for batch in self.last.batches]
        return {"key": list(self.key), "batches": batches, "units": self.last.units.cpu()}

    def __call__(self, run: Any, step: Step) -> tuple[Step, float]:
        """The step's completions, and the seconds spent generating and scoring them (0 when reused)."""
        key = (step.plan.epoch, (step.plan.done - 1) // self.span)  # the repeats of one step share it
        if self.iterations > 1 and key == self.key:
            return Step(step.plan, self.last.batches, self.last.units), 0.0
        self.key = key
        self.last, seconds = rolled_out(run, step, old=self.iterations > 1)
        return self.last, seconds


def rolled_out(run: Any, step: Step, old: bool = False) -> tuple[Step, float]:
    """The step with every micro-batch's completions in place of its prompts, and the seconds spent
    generating and scoring; with `old`, each completion token's log-probability under the model now."""
    import torch

    prep, accelerator = run.prep, run.accelerator
    model = accelerator.unwrap_model(run.model)
    started, outputs = time.perf_counter(), []
    with accelerator.autocast():
        for k, batch in enumerate(step.batches):
            seed = rollout_seed(run.loaded.recipe.seed, run.state.step + 1, accelerator.process_index, k)
            where = [f"training row {row}" for row in batch.rows]
            outputs.append(prep.objective.rollout(model, _on_host(batch.tensors), prep.tokenizer, seed, where)
                           if batch.units else None)
    seconds = time.perf_counter() - started
    # DAPO divides by the step's completion tokens over all ranks: one count per step, shared
    local = [sum(int(trainable_tokens(out["labels"])) for out in outputs if out),
             sum(len(out["advantages"]) for out in outputs if out)]
    tokens, completions = accelerator.reduce(torch.tensor(local, dtype=torch.float64, device=accelerator.device),
                                             "sum").tolist()
    batches = [_batch(out, batch, tokens / max(completions, 1), accelerator.device, prep.token_capacity)
               for out, batch in zip(outputs, step.batches)]
    if old:
        with torch.no_grad(), accelerator.autocast():
            for batch in batches:
                if batch.units:
                    batch.tensors["old_logps"] = prep.objective.sequence_logps(model, batch.tensors)
    units = torch.tensor(float(sum(batch.units for batch in batches)), dtype=torch.float64)
    return Step(step.plan, batches, to_device({"units": units}, accelerator.device)["units"]), seconds


def _batch(out: dict | None, prompts: Batch, tokens_per_completion: float, device: Any, capacity: int) -> Batch:
    """The completions as a micro-batch on the device, their counts taken here; an empty filler stays."""
    if out is None:
        return prompts
    tokens = int(out.pop("num_tokens"))
    out["trained_positions"] = trained_positions(out["labels"])
    out["tokens_per_completion"] = tokens_per_completion
    lengths = out["attention_mask"].sum(1).tolist()
    on_device = to_device(out, device)
    on_device["token_capacity"] = capacity
    return Batch(on_device, tokens, int(trainable_tokens(out["labels"])), out["input_ids"].numel(),
                 sum(n * n for n in lengths), len(out["advantages"]), prompts.rows, len(out["advantages"]))


def _restored(kept: dict, device: Any) -> tuple[tuple, Step]:
    batches = [Batch(**{**batch, "tensors": to_device(batch["tensors"], device)}) for batch in kept["batches"]]
    return tuple(kept["key"]), Step(None, batches, kept["units"].to(device))


def _on_host(tensors: dict) -> dict:
    """A micro-batch's tensors in host memory (the prompts as the objective's collate made them, or a
    generation a checkpoint keeps); other values (Python lists, numbers) as they are."""
    return {key: value.cpu() if hasattr(value, "cpu") else value for key, value in tensors.items()}


def rollout_seed(seed: int, step: int, rank: int, micro_batch: int) -> int:
    """The sampling seed of one micro-batch of a rank's step."""
    digest = hashlib.sha256(f"{seed}:{step}:{rank}:{micro_batch}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
