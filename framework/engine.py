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
from framework.metrics import Window
from framework.modeling import build_model, load_tokenizer, param_groups, preflight
from framework.output import save_checkpoint, save_final, say
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


def train(loaded: LoadedRecipe) -> Path:
    """Run the recipe to completion and return the output directory."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    recipe, cfg = loaded.recipe, loaded.recipe.train
    parts = bind_parts(loaded)
    preflight(recipe)
    accelerator = Accelerator(cpu=recipe.launch.device == "cpu", mixed_precision=recipe.launch.mixed_precision)
    prep = prepare(loaded, parts, accelerator.local_main_process_first(), accelerator.process_index,
                   accelerator.num_processes)
    set_seed(recipe.seed)
    model = build_model(recipe, prep.tokenizer)
    optimizer = prep.parts.optimizer(param_groups(model))
    scheduler = prep.parts.scheduler(optimizer, prep.plan.total_steps)
    output_dir = Path(recipe.output_dir)
    hook = _start_loggers(prep, output_dir, accelerator.is_main_process)
    if recipe.data.mix_dir and accelerator.is_main_process:
        write_mix(Path(recipe.data.mix_dir), prep.data.build_mixture(), prep.data.mixture_stats)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    hook.seqtune_train_start(run=_run_info(prep, model))

    step, window, started = 0, Window(), time.perf_counter()
    for epoch, micro_batches in enumerate(prep.plan.epochs):
        for first in range(0, len(micro_batches), cfg.gradient_accumulation_steps):
            # All micro-batches of one optimizer step, so token_mean knows the step's token count.
            batches = [_collate(prep, mb, accelerator.device)
                       for mb in micro_batches[first:first + cfg.gradient_accumulation_steps]]
            local_tokens = sum((b["labels"][:, 1:] != IGNORE_INDEX).sum() for b in batches)
            step_tokens = accelerator.reduce(local_tokens.clone(), "sum")
            for k, batch in enumerate(batches):
                with contextlib.nullcontext() if k == len(batches) - 1 else accelerator.no_sync(model):
                    loss_sum, tokens = token_loss(model, batch)
                    accelerator.backward(scale_loss(loss_sum, tokens, step_tokens, len(batches),
                                                    cfg.loss_reduction, cfg.gradient_accumulation_steps,
                                                    accelerator.num_processes))
                window.count(batch, loss_sum)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm or math.inf)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            hook.seqtune_step_end(step=step)
            if step % recipe.logging.every_steps == 0 or step == prep.plan.total_steps:
                progress = epoch + (first + len(batches)) / len(micro_batches)
                hook.seqtune_log(step=step, metrics=window.flush(accelerator, scheduler.get_last_lr()[0],
                                                                  grad_norm, progress))
            if recipe.checkpoint.every not in (None, "epoch") and step % recipe.checkpoint.every == 0:
                _checkpoint(accelerator, model, prep, output_dir, step, hook)
            if step == prep.plan.total_steps:
                break
        if recipe.checkpoint.every == "epoch":
            _checkpoint(accelerator, model, prep, output_dir, step, hook)
    if accelerator.is_main_process:
        save_final(accelerator.unwrap_model(model), prep.tokenizer, loaded, prep.data.report, output_dir)
    hook.seqtune_train_end(summary={"steps": step, "train_seconds": round(time.perf_counter() - started, 2),
                                    "final_loss": window.last_loss, **window.totals,
                                    "packing_efficiency": round(prep.plan.efficiency, 4)})
    return output_dir


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


def _run_info(prep: Prepared, model: Any) -> RunInfo:
    recipe = prep.loaded.recipe
    return RunInfo(run_name=recipe.run_name, output_dir=recipe.output_dir, recipe=prep.loaded.data,
                   total_steps=prep.plan.total_steps, steps_per_epoch=prep.plan.steps_per_epoch[0],
                   num_rows=len(prep.data.dataset), num_parameters=sum(p.numel() for p in model.parameters()),
                   extra={"truncation": vars(prep.data.report), "packing_efficiency": prep.plan.efficiency})


def _checkpoint(accelerator: Any, model: Any, prep: Prepared, output_dir: Path, step: int, hook: Any) -> None:
    if accelerator.is_main_process:
        path = save_checkpoint(accelerator.unwrap_model(model), prep.tokenizer, output_dir, step,
                               prep.loaded.recipe.checkpoint.keep_last)
        hook.seqtune_checkpoint_saved(step=step, path=str(path))
    accelerator.wait_for_everyone()
