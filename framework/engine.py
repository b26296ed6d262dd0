"""The training engine: set-up that fails fast on bad input, then one readable training loop."""
from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framework.components import Parts, bind_parts
from framework.config import LoadedRecipe
from framework.data import PreparedData, prepare_data, write_mix
from framework.hardware import peak_memory_gib, peak_tflops
from framework.lora import apply_lora, load_lora_weights, save_lora, trainable_summary
from framework.metrics import Window
from framework.modeling import build_model, load_tokenizer, param_groups, preflight
from framework.checkpoint import TrainerState, find_resume
from framework.checkpoint import load as load_checkpoint
from framework.checkpoint import save as save_checkpoint
from framework.deepspeed import deepspeed_config
from framework.errors import RunStopped
from framework.output import save_final, say
from framework.signals import StopSignals
from framework.plan import RunPlan, make_plan
from framework.types import IGNORE_INDEX, MODEL_INPUTS, RunInfo, Sample


@dataclass
class Prepared:
    """Everything the loop needs; building it touches nothing in output_dir."""

    loaded: LoadedRecipe
    parts: Parts
    tokenizer: Any
    data: PreparedData
    packing: Any
    plan: RunPlan


def prepare(loaded: LoadedRecipe, parts: Parts, main_first: Any = None, rank: int = 0,
            world: int = 1) -> Prepared:
    """Load the tokenizer and the data and plan the run: every data error is raised here."""
    recipe = loaded.recipe
    tokenizer = load_tokenizer(recipe, parts.registry.entries["chat_templates"])
    data = prepare_data(recipe, parts.loaders, parts.formats, parts.truncation, tokenizer, main_first)
    packing = parts.packing()
    plan = make_plan(packing, data.lengths, recipe.train, recipe.data.max_seq_length, recipe.seed, rank,
                     world, padding_free=padding_free(recipe, packing))
    say(f"data{' (cached)' if data.from_cache else ''}: {data.report.summary()}")
    say(f"packing: {recipe.data.packing.name}, {plan.micro_batches:,} micro-batches per epoch, "
        f"efficiency {plan.efficiency:.2%} (real tokens / token slots); {plan.total_steps:,} optimizer steps")
    return Prepared(loaded, parts, tokenizer, data, packing, plan)


def padding_free(recipe: Any, packing: Any) -> bool:
    """flash-attention takes packed sequences only as one padding-free row."""
    return (recipe.model.attn_implementation.startswith("flash_attention")
            and getattr(packing, "supports_padding_free", False))


def token_loss(model: Any, batch: dict) -> tuple[Any, Any]:
    """Summed next-token cross-entropy over trainable tokens (fp32), and how many there were."""
    import torch.nn.functional as F

    labels = batch["labels"][:, 1:]
    inputs = {key: batch[key] for key in MODEL_INPUTS if key in batch}
    logits = model(**inputs, use_cache=False).logits[:, :-1]
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


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class Run:
    """A run ready for its first (or next) optimizer step."""

    loaded: LoadedRecipe
    prep: Prepared
    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    hook: Any
    state: TrainerState
    output_dir: Path


def start(loaded: LoadedRecipe) -> Run:
    """Everything before the first step. Input errors surface before output_dir is written."""
    from accelerate.utils import set_seed

    recipe = loaded.recipe
    parts = bind_parts(loaded)
    preflight(recipe)
    output_dir = Path(recipe.output_dir)
    resume_from = find_resume(recipe.checkpoint.resume, output_dir)
    accelerator = make_accelerator(recipe)
    prep = prepare(loaded, parts, accelerator.local_main_process_first(), accelerator.process_index,
                   accelerator.num_processes)
    set_seed(recipe.seed)
    model = _model(recipe, prep.tokenizer, resume_from)
    optimizer = parts.optimizer(param_groups(model))
    model, optimizer = accelerator.prepare(model, optimizer)
    # After prepare: ZeRO-3 regroups the optimizer's parameters, and the schedule must see its groups.
    scheduler = parts.scheduler(optimizer, prep.plan.total_steps)
    hook = _start_loggers(prep, output_dir, accelerator.is_main_process)
    if recipe.data.mix_dir and accelerator.is_main_process:
        write_mix(Path(recipe.data.mix_dir), prep.data.build_mixture(), prep.data.mixture_stats)
    fingerprint = _fingerprint(prep, accelerator.num_processes)
    state = TrainerState(fingerprint=fingerprint)
    if resume_from is not None:
        state = load_checkpoint(resume_from, accelerator, optimizer, scheduler, fingerprint)
        say(f"resuming from {resume_from} at step {state.step:,}")
    return Run(loaded, prep, accelerator, model, optimizer, scheduler, hook, state, output_dir)


def _model(recipe: Any, tokenizer: Any, resume_from: Path | None) -> Any:
    """The model to train: full weights, or a LoRA adapter on the base (a LoRA checkpoint holds only
    the adapter, so a resumed one rebuilds the base and loads the adapter into it)."""
    if recipe.lora is None:
        return build_model(recipe, tokenizer, resume_from)
    model = apply_lora(build_model(recipe, tokenizer), recipe.lora)
    if resume_from is not None:
        load_lora_weights(model, resume_from)
    counts = trainable_summary(model)
    say(f"lora: {counts['trainable']:,} of {counts['total']:,} parameters trainable")
    return model


def train(loaded: LoadedRecipe) -> Path:
    """Run the recipe to completion (or from its last checkpoint) and return the output directory."""
    run = start(loaded)
    recipe, cfg, plan = loaded.recipe, loaded.recipe.train, run.prep.plan
    accelerator, model, optimizer, scheduler, hook, state = (
        run.accelerator, run.model, run.optimizer, run.scheduler, run.hook, run.state)
    model.train()
    hook.seqtune_train_start(run=_run_info(run.prep, model, state.step))
    window = Window(state.totals, sum(p.numel() for p in model.parameters()),
                    peak_tflops(recipe.logging.peak_tflops))
    started = time.perf_counter()
    with StopSignals() as signals:
        for epoch in range(state.epoch, len(plan.epochs)):
            micro_batches = plan.epochs[epoch]
            for first in range(state.micro_batch if epoch == state.epoch else 0, len(micro_batches),
                               cfg.gradient_accumulation_steps):
                # All micro-batches of one optimizer step, so token_mean knows the step's token count.
                step_plan = micro_batches[first:first + cfg.gradient_accumulation_steps]
                batches = [_collate(run.prep, mb, accelerator.device) for mb in step_plan]
                local_tokens = sum(b["labels"][:, 1:].ne(IGNORE_INDEX).sum() for b in batches)
                step_tokens = accelerator.reduce(local_tokens, "sum")
                step_loss = 0.0
                for k, batch in enumerate(batches):
                    hook.seqtune_micro_batch(step=state.step + 1, pieces=step_plan[k])
                    with _accumulating(accelerator, model, last=k == len(batches) - 1):
                        loss_sum, tokens = token_loss(model, batch)
                        loss = scale_loss(loss_sum, tokens, step_tokens, len(batches), cfg.loss_reduction,
                                          cfg.gradient_accumulation_steps, accelerator.num_processes)
                        accelerator.backward(loss * _deepspeed_gas(accelerator, model))
                    window.count(batch, loss_sum)
                    step_loss = step_loss + loss_sum.detach()
                # One collective per step: is the loss finite everywhere, and did any rank get a signal?
                finite, stop = _step_checks(accelerator, step_loss, signals.requested)
                if not finite:
                    raise RunStopped(_non_finite_message(state.step + 1, run.output_dir), exit_code=1)
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm or math.inf)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step, state.epoch, state.micro_batch = _advance(state.step, epoch, first + len(batches),
                                                                     len(micro_batches))
                hook.seqtune_step_end(step=state.step)
                if state.step % recipe.logging.every_steps == 0 or state.step == plan.total_steps:
                    progress = epoch + (first + len(batches)) / len(micro_batches)
                    metrics = window.flush(accelerator, scheduler.get_last_lr()[0], grad_norm, progress)
                    hook.seqtune_log(step=state.step, metrics=metrics)
                if accelerator.num_processes == 1:  # alone, a signal that came during this step stops now
                    stop = stop or signals.requested or 0
                every = recipe.checkpoint.every
                if stop or (every not in (None, "epoch") and state.step % every == 0):
                    _checkpoint(run, window)
                if stop:
                    raise RunStopped(f"stopped by {signal.Signals(stop).name} after step {state.step:,}; "
                                     f"run the same command again to resume", exit_code=128 + stop)
                if state.step == plan.total_steps:
                    break
            if recipe.checkpoint.every == "epoch":
                _checkpoint(run, window)
            if state.step == plan.total_steps:
                break
    weights = accelerator.get_state_dict(model)  # every rank: ZeRO-3 gathers the shards here
    if accelerator.is_main_process:
        save_final(accelerator.unwrap_model(model), run.prep.tokenizer, loaded, run.prep.data.report,
                   run.output_dir, weights)
        if recipe.lora is not None and recipe.lora.merge:
            save_lora(accelerator.unwrap_model(model), run.prep.tokenizer, run.output_dir, merge=True)
    hook.seqtune_train_end(summary={"steps": state.step, "train_seconds": round(time.perf_counter() - started, 2),
                                    "final_loss": window.last_loss, **window.totals,
                                    "packing_efficiency": round(plan.efficiency, 4),
                                    "peak_memory_gib": round(peak_memory_gib(accelerator.device), 3)})
    return run.output_dir


def make_accelerator(recipe: Any) -> Any:
    """DDP (or one process) on CUDA or the CPU; DeepSpeed ZeRO when the recipe asks for it."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    launch = recipe.launch
    if launch.deepspeed is None:
        return Accelerator(cpu=launch.device == "cpu", mixed_precision=launch.mixed_precision)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    plugin = DeepSpeedPlugin(hf_ds_config=deepspeed_config(recipe, world))
    # On the CPU, DeepSpeed runs over gloo; Accelerator(cpu=True) would silently drop DeepSpeed.
    handlers = [InitProcessGroupKwargs(backend="gloo")] if launch.device == "cpu" else []
    return Accelerator(deepspeed_plugin=plugin, mixed_precision=launch.mixed_precision, kwargs_handlers=handlers)


def _is_deepspeed(accelerator: Any) -> bool:
    return accelerator.distributed_type.name == "DEEPSPEED"


def _accumulating(accelerator: Any, model: Any, last: bool) -> Any:
    """No gradient sync before a step's last micro-batch. DeepSpeed instead learns where the window
    ends (it steps itself there; ZeRO-2/3 have no no_sync)."""
    if _is_deepspeed(accelerator):
        accelerator.gradient_state._set_sync_gradients(last)
        return contextlib.nullcontext()
    return contextlib.nullcontext() if last else accelerator.no_sync(model)


def _deepspeed_gas(accelerator: Any, model: Any) -> int:
    """DeepSpeed divides every micro-batch's loss by its accumulation count; the loss is already
    normalised for the whole step, so that division is undone (with the engine's own count)."""
    return model.gradient_accumulation_steps() if _is_deepspeed(accelerator) else 1


def _advance(step: int, epoch: int, next_micro_batch: int, epoch_length: int) -> tuple[int, int, int]:
    """(step, epoch, micro-batch) after an optimizer step: where a resume would continue."""
    if next_micro_batch >= epoch_length:
        return step + 1, epoch + 1, 0
    return step + 1, epoch, next_micro_batch


def _step_checks(accelerator: Any, step_loss: Any, signum: int | None) -> tuple[bool, int]:
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


def _fingerprint(prep: Prepared, world: int) -> str:
    """What must not change for a checkpoint to continue this run exactly."""
    import hashlib

    recipe = prep.loaded.recipe
    parts = [prep.data.cache_path.name, world, recipe.train.per_device_batch_size,
             recipe.train.gradient_accumulation_steps, recipe.data.packing.name, recipe.seed,
             [len(epoch) for epoch in prep.plan.epochs]]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _collate(prep: Prepared, micro_batch: Any, device: Any) -> dict:
    """A micro-batch's tensors on the device; an empty one (None) when this rank has run out."""
    empty = [[Sample([prep.tokenizer.pad_token_id], [IGNORE_INDEX])]]  # keeps the ranks in step
    rows = prep.data.take(micro_batch) if micro_batch is not None else empty
    batch = prep.packing.collate(rows, prep.tokenizer.pad_token_id, padding_free(prep.loaded.recipe, prep.packing))
    if micro_batch is None:
        batch["num_tokens"] = batch["num_tokens"] * 0  # the placeholder token is not data
    return {key: value.to(device) for key, value in batch.items()}


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


def _run_info(prep: Prepared, model: Any, start_step: int) -> RunInfo:
    recipe = prep.loaded.recipe
    return RunInfo(run_name=recipe.run_name, output_dir=recipe.output_dir, recipe=prep.loaded.data,
                   total_steps=prep.plan.total_steps, steps_per_epoch=prep.plan.steps_per_epoch[0],
                   num_rows=len(prep.data.dataset), num_parameters=sum(p.numel() for p in model.parameters()),
                   start_step=start_step,
                   extra={"truncation": vars(prep.data.report), "packing_efficiency": prep.plan.efficiency})


def _checkpoint(run: Run, window: Window) -> None:
    run.state.totals = dict(window.totals)
    path = save_checkpoint(run.accelerator, run.model, run.optimizer, run.scheduler, run.prep.tokenizer,
                           run.output_dir, run.state, run.loaded.recipe.checkpoint.keep_last)
    run.hook.seqtune_checkpoint_saved(step=run.state.step, path=str(path))
