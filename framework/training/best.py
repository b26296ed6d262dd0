"""The best evaluation so far: `eval.keep_best` keeps its model in output_dir/best, and
`eval.early_stopping_patience` ends the run after that many evaluations without a real improvement.

What is tracked lives in the trainer state (`state.best`: the lowest eval_loss, its step, and how many
evaluations since eval_loss last fell by more than `eval.min_delta`), which checkpoints save: a resumed
run keeps the same best and stops at the same step as the uninterrupted run. Every rank reaches the
same decision, since eval_loss is reduced over all of them.
"""
from __future__ import annotations

import json
import shutil
from typing import Any

from framework.report.run import BEST, BEST_RECORD
from framework.training.checkpoints import delete_folder, model_weights
from framework.training.outputs import save_final, say


def track(run: Any) -> bool:
    """After an evaluation (run.last_eval): a new best is recorded (and its model saved with
    keep_best); True when early stopping's patience has run out."""
    held, state = run.loaded.recipe.eval, run.state
    loss, best = run.last_eval["eval_loss"], state.best
    if not best or loss < best["eval_loss"]:
        improved = not best or loss < best["eval_loss"] - held.min_delta
        state.best = {"eval_loss": loss, "step": state.step, "stale": 0 if improved else best["stale"] + 1}
        if held.keep_best:
            _save(run)
    else:
        state.best = {**best, "stale": best["stale"] + 1}
    patience = held.early_stopping_patience
    if patience is None or state.best["stale"] < patience:
        return False
    say(f"early stop after step {state.step:,}: eval_loss has not fallen below {state.best['eval_loss']:.4f} "
        f"(step {state.best['step']:,}) by more than {held.min_delta:g} for {patience} evaluations "
        "(eval.early_stopping_patience)")
    return True


def _save(run: Any) -> None:
    """output_dir/best, written under a hidden name and renamed: a kill leaves the old best or the new."""
    accelerator = run.accelerator
    weights = model_weights(accelerator, run.model)
    if accelerator.is_main_process:
        target, partial = run.output_dir / BEST, run.output_dir / f".partial-{BEST}"
        shutil.rmtree(partial, ignore_errors=True)
        model = accelerator.unwrap_model(run.model)
        save_final(model, run.prep.tokenizer, run.loaded, run.prep.data.report, partial, weights)
        record = {"step": run.state.step, **run.last_eval}
        (partial / BEST_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if target.exists():
            delete_folder(target)
        partial.rename(target)
    accelerator.wait_for_everyone()
