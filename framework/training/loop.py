"""The training loop, top to bottom in `train`: set up, then for every optimizer step its micro-batches'
forward and backward, the update, and the after-step work (logging, evaluation, checkpoints, stop checks).

The helpers it names live beside it: `setup.py` (everything before the first step), `steps.py` (one
step's micro-batches and the update), `loss.py`, `checkpoints.py`, `metrics.py` and `outputs.py`.
"""
from __future__ import annotations

import math
import signal
from pathlib import Path
from typing import Any

from framework.config import LoadedRecipe
from framework.errors import RunStopped
from framework.estimation.hardware import FlopsShape
from framework.model.lora import save_merged
from framework.report.run import BEST
from framework.training.best import track as track_best
from framework.training.checkpoints import model_weights, save as save_checkpoint
from framework.training.evaluation import evaluate
from framework.training.metrics import Window, peak_memory_gib, peak_tflops
from framework.training.outputs import save_final, write_artefacts
from framework.training.ownership import mark_finished
from framework.training.rollout import Rollouts, is_online
from framework.training.setup import Run, run_info, start
from framework.training.signals import StopSignals
from framework.training.steps import StepPlan, forward_backward, optimizer_step, prepared_steps, remaining_steps


def train(loaded: LoadedRecipe) -> Path:
    """Run the recipe to completion (or from its last checkpoint) and return the output directory."""
    run = start(loaded)
    if run is None:  # output_dir already holds this run, finished
        return Path(loaded.recipe.output_dir)
    recipe, accelerator, plan = loaded.recipe, run.accelerator, run.prep.plan
    run.model.train()
    run.hook.seqtune_train_start(run=run_info(run))
    # the window also times the run: its totals carry train_seconds across resumes, as they do tokens
    window = Window(run.state.totals, FlopsShape.of(run.model), peak_tflops(recipe.logging.peak_tflops))
    run.rollout = Rollouts(run) if is_online(run.prep.objective) else None
    with StopSignals() as signals:
        # A step's micro-batches all come first (the next step's are collated while this one trains),
        # so token_mean knows the step's token (or pair) count. Nothing is read back from the device
        # until the optimizer step's one check.
        for prepared in prepared_steps(run, remaining_steps(plan, run.state, recipe.train.gradient_accumulation_steps)):
            if run.state.step == plan.total_steps:  # first: a resumed last checkpoint has no step left
                break
            if run.rollout is not None:  # GRPO: the prompts' completions, generated and scored now
                prepared, seconds = run.rollout(run, prepared)
                window.timed("generation", seconds)
            step, batches = prepared.plan, prepared.batches
            step_units = accelerator.reduce(prepared.units, "sum")
            step_loss = 0.0
            for k, batch in enumerate(batches):
                run.hook.seqtune_micro_batch(step=run.state.step + 1, pieces=step.micro_batches[k])
                loss_sum, metrics = forward_backward(run, batch, step_units, len(batches), last=k == len(batches) - 1)
                window.count(batch, loss_sum, metrics)
                step_loss = step_loss + loss_sum
            grad_norm, stop = optimizer_step(run, step_loss, signals.requested)
            run.state.advance(step.epoch, step.done, step.epoch_length)
            if _after_step(run, step, window, grad_norm, stop, signals):
                break  # eval_loss stopped improving (eval.early_stopping_patience): this model is the final one
    summary = _summary(run, window)
    _save_outputs(run, summary)
    run.hook.seqtune_train_end(summary=summary)
    # No rank leaves while another still writes: a rank that exits tears down its ZeRO-3 engines and its
    # end of the process group under the others (with a frozen reference engine: an abort in 1 run of 4).
    accelerator.wait_for_everyone()
    return run.output_dir


def _after_step(run: Run, step: StepPlan, window: Window, grad_norm: Any, stop: int, signals: StopSignals
                ) -> bool:
    """Tell the loggers, evaluate, write a checkpoint when one is due, and stop when a signal asked for
    it. `stop` is the signal any rank had received by the step's check. True: stop early."""
    recipe, state = run.loaded.recipe, run.state
    run.hook.seqtune_step_end(step=state.step)
    last = state.step == run.prep.plan.total_steps
    evaluating = run.evaluation is not None and (last or state.step % (recipe.eval.every_steps or math.inf) == 0)
    # An evaluation that may stop the run logs the training window first: the record then ends with it.
    if state.step % recipe.logging.every_steps == 0 or last or (evaluating and recipe.eval.early_stopping_patience):
        _log(run, window.flush(run.accelerator, run.scheduler.get_last_lr()[0], grad_norm, step.progress))
    early = False
    if evaluating:
        run.last_eval = evaluate(run)
        _log(run, run.last_eval)
        early = track_best(run) and not last
    if run.accelerator.num_processes == 1:  # alone, a signal that came during this step stops now
        stop = stop or signals.requested or 0
    every = recipe.checkpoint.every
    epoch_ended = step.done == step.epoch_length or last
    if stop or (every == "epoch" and epoch_ended) or (isinstance(every, int) and state.step % every == 0):
        state.totals = dict(window.totals)
        path = save_checkpoint(run.accelerator, run.model, run.optimizer, run.scheduler, run.prep.tokenizer,
                               run.output_dir, state, recipe.checkpoint.keep_last,
                               run.rollout.kept() if run.rollout is not None else None)
        run.hook.seqtune_checkpoint_saved(step=state.step, path=str(path))
    if stop:
        raise RunStopped(f"stopped by {signal.Signals(stop).name} after step {state.step:,}; "
                         "run the same command again to resume", exit_code=128 + stop)
    return early


def _log(run: Run, metrics: dict) -> None:
    run.hook.seqtune_log(step=run.state.step, metrics=metrics)
    run.history.append({"step": run.state.step, **metrics})


def _save_outputs(run: Run, summary: dict) -> None:
    """The final model (and the merged LoRA model when asked for), the recipe, the data report, the
    loss curve and a model card in each model folder."""
    accelerator, recipe = run.accelerator, run.loaded.recipe
    weights = model_weights(accelerator, run.model)
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(run.model)
        save_final(model, run.prep.tokenizer, run.loaded, run.prep.data.report, run.output_dir, weights)
        folders = [run.output_dir]
        if recipe.lora is not None and recipe.lora.merge:
            # save_final wrote the adapter and the tokenizer: only the merged model is left to write
            save_merged(model, run.prep.tokenizer, run.output_dir / "merged", weights)
            folders.append(run.output_dir / "merged")
        if (run.output_dir / BEST).is_dir():  # eval.keep_best
            folders.append(run.output_dir / BEST)
        write_artefacts(run, summary, folders)
        mark_finished(run.output_dir, run.state.step)  # last: the same command again has nothing to do


def _summary(run: Run, window: Window) -> dict[str, float]:
    """The run's figures; train_seconds and the token totals count every session of a resumed run."""
    totals = window.totals
    return {"steps": run.state.step, "train_seconds": totals.pop("train_seconds"),
            "final_loss": window.last_loss, **{f"final_{k}": v for k, v in window.last_objective.items()},
            **run.last_eval, **_best(run.state.best), **totals,
            "packing_efficiency": round(run.prep.plan.efficiency, 4),
            "peak_memory_gib": round(peak_memory_gib(run.accelerator.device), 3)}


def _best(best: dict) -> dict[str, float]:
    return {"best_eval_loss": best["eval_loss"], "best_step": best["step"]} if best else {}
