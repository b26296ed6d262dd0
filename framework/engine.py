"""The training engine: set-up that fails fast on bad input, then one readable training loop."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framework.components import Parts, bind_parts
from framework.config import LoadedRecipe
from framework.data import PreparedData, prepare_data, write_mix
from framework.modeling import build_model, load_tokenizer, param_groups, preflight
from framework.output import save_checkpoint, save_final, say
from framework.types import IGNORE_INDEX, RunInfo


@dataclass
class Prepared:
    """Everything the loop needs; building it touches nothing in output_dir."""

    loaded: LoadedRecipe
    parts: Parts
    tokenizer: Any
    data: PreparedData
    packing: Any
    steps_per_epoch: int
    total_steps: int


def prepare(loaded: LoadedRecipe, parts: Parts, main_first: Any = None) -> Prepared:
    """Load the tokenizer and the data and size the run: every data error is raised here."""
    recipe = loaded.recipe
    tokenizer = load_tokenizer(recipe, parts.registry.entries["chat_templates"])
    data = prepare_data(recipe, parts.loaders, parts.formats, parts.truncation, tokenizer, main_first)
    say(f"data{' (cached)' if data.from_cache else ''}: {data.report.summary()}")
    packing = parts.packing()
    micro_batches = len(packing.plan(data.lengths, recipe.train.per_device_batch_size, recipe.seed))
    steps_per_epoch = math.ceil(micro_batches / recipe.train.gradient_accumulation_steps)
    total_steps = recipe.train.max_steps or steps_per_epoch * recipe.train.epochs
    return Prepared(loaded, parts, tokenizer, data, packing, steps_per_epoch, total_steps)


def token_loss(model: Any, batch: dict) -> tuple[Any, Any]:
    """Summed next-token cross-entropy over trainable tokens (fp32), and how many there were."""
    import torch.nn.functional as F

    labels = batch.pop("labels")[:, 1:]
    logits = model(**batch, use_cache=False).logits[:, :-1]
    loss_sum = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, (labels != IGNORE_INDEX).sum()


def scale_loss(loss_sum: Any, tokens: Any, step_tokens: Any, n_micro: int, reduction: str,
               accumulation: int, world: int) -> Any:
    """The loss whose gradient (after DDP's mean over ranks) is the recipe's normalisation."""
    if reduction == "token_mean":  # one global mean over the whole optimizer step
        return loss_sum * world / step_tokens
    if reduction == "mean":  # each micro-batch's own mean, averaged (Hugging Face's default)
        return loss_sum / tokens.clamp(min=1) / n_micro
    return loss_sum / accumulation  # open-instruct's reduce_loss sum under accelerate's accumulate


def train(loaded: LoadedRecipe) -> Path:
    """Run the recipe to completion and return the output directory."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    recipe, cfg = loaded.recipe, loaded.recipe.train
    parts = bind_parts(loaded)
    preflight(recipe)
    accelerator = Accelerator(cpu=recipe.launch.device == "cpu", mixed_precision=recipe.launch.mixed_precision)
    prep = prepare(loaded, parts, accelerator.local_main_process_first())
    set_seed(recipe.seed)
    model = build_model(recipe, prep.tokenizer)
    optimizer = prep.parts.optimizer(param_groups(model))
    scheduler = prep.parts.scheduler(optimizer, prep.total_steps)
    output_dir = Path(recipe.output_dir)
    hook = _start_loggers(prep, output_dir, accelerator.is_main_process)
    if recipe.data.mix_dir and accelerator.is_main_process:
        write_mix(Path(recipe.data.mix_dir), prep.data.build_mixture(), prep.data.mixture_stats)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    hook.seqtune_train_start(run=_run_info(prep, model))

    lengths = prep.data.lengths
    step, window, started = 0, Window(), time.perf_counter()
    epochs = math.ceil(prep.total_steps / prep.steps_per_epoch)
    for epoch in range(epochs):
        plan = prep.packing.plan(lengths, cfg.per_device_batch_size, recipe.seed + epoch)
        for first in range(0, len(plan), cfg.gradient_accumulation_steps):
            # All micro-batches of one optimizer step, so token_mean knows the step's token count.
            batches = [prep.packing.collate(prep.data.take(mb), prep.tokenizer.pad_token_id)
                       for mb in plan[first:first + cfg.gradient_accumulation_steps]]
            batches = [{k: v.to(accelerator.device) for k, v in b.items()} for b in batches]
            local_tokens = sum((b["labels"][:, 1:] != IGNORE_INDEX).sum() for b in batches)
            step_tokens = accelerator.reduce(local_tokens.clone(), "sum")
            for k, batch in enumerate(batches):
                window.count(batch)
                last = k == len(batches) - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    loss_sum, tokens = token_loss(model, batch)
                    accelerator.backward(scale_loss(loss_sum, tokens, step_tokens, len(batches),
                                                    cfg.loss_reduction, cfg.gradient_accumulation_steps,
                                                    accelerator.num_processes))
                window.loss_sum += loss_sum.detach()
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm or math.inf)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            hook.seqtune_step_end(step=step)
            if step % recipe.logging.every_steps == 0 or step == prep.total_steps:
                lr = scheduler.get_last_lr()[0]
                hook.seqtune_log(step=step, metrics=window.flush(accelerator, lr, grad_norm, step / prep.steps_per_epoch))
            if recipe.checkpoint.every not in (None, "epoch") and step % recipe.checkpoint.every == 0:
                _checkpoint(accelerator, model, prep, output_dir, step, hook)
            if step == prep.total_steps:
                break
        if recipe.checkpoint.every == "epoch":
            _checkpoint(accelerator, model, prep, output_dir, step, hook)
    if accelerator.is_main_process:
        save_final(accelerator.unwrap_model(model), prep.tokenizer, loaded, prep.data.report, output_dir)
    hook.seqtune_train_end(summary={"steps": step, "train_seconds": round(time.perf_counter() - started, 2),
                                    "final_loss": window.last_loss, **window.totals})
    return output_dir


class Window:
    """Token and loss tallies between two logging steps (and over the whole run)."""

    def __init__(self):
        self.totals = {"tokens": 0, "trainable_tokens": 0}
        self.last_loss = math.nan
        self._reset()

    def _reset(self) -> None:
        self.loss_sum, self.tokens, self.trainable, self.started = 0.0, 0, 0, time.perf_counter()

    def count(self, batch: dict) -> None:
        mask = batch.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        self.trainable += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def flush(self, accelerator: Any, lr: float, grad_norm: Any, epoch: float) -> dict[str, float]:
        """This window's metrics summed over all ranks; every rank must call it."""
        import torch

        local = torch.tensor([float(self.loss_sum), self.tokens, self.trainable], dtype=torch.float64,
                             device=accelerator.device)
        loss_sum, tokens, trainable = accelerator.reduce(local, "sum").tolist()
        seconds = max(time.perf_counter() - self.started, 1e-9)
        self.totals["tokens"] += int(tokens)
        self.totals["trainable_tokens"] += int(trainable)
        self.last_loss = loss_sum / max(trainable, 1)
        self._reset()
        return {"loss": self.last_loss, "lr": lr, "grad_norm": float(grad_norm), "epoch": round(epoch, 4),
                "tokens_per_s": tokens / seconds, "trainable_tokens_per_s": trainable / seconds}


class _Silent:
    """The hook relay on non-main processes: lifecycle calls do nothing there."""

    def __getattr__(self, name: str) -> Any:
        return lambda **kwargs: None


def _start_loggers(prep: Prepared, output_dir: Path, is_main: bool) -> Any:
    if not is_main:
        return _Silent()
    loggers = [make(str(output_dir)) for make in prep.parts.loggers]  # may fail on a missing package
    output_dir.mkdir(parents=True, exist_ok=True)  # the run's first write
    for logger in loggers:
        prep.parts.registry.pm.register(logger)
    return prep.parts.registry.pm.hook


def _run_info(prep: Prepared, model: Any) -> RunInfo:
    recipe = prep.loaded.recipe
    return RunInfo(run_name=recipe.run_name, output_dir=recipe.output_dir, recipe=prep.loaded.data,
                   total_steps=prep.total_steps, steps_per_epoch=prep.steps_per_epoch,
                   num_rows=len(prep.data.dataset), num_parameters=sum(p.numel() for p in model.parameters()),
                   extra={"truncation": vars(prep.data.report)})


def _checkpoint(accelerator: Any, model: Any, prep: Prepared, output_dir: Path, step: int, hook: Any) -> None:
    if accelerator.is_main_process:
        path = save_checkpoint(accelerator.unwrap_model(model), prep.tokenizer, output_dir, step,
                               prep.loaded.recipe.checkpoint.keep_last)
        hook.seqtune_checkpoint_saved(step=step, path=str(path))
    accelerator.wait_for_everyone()
