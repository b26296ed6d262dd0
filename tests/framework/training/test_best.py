"""The best evaluation and early stopping: which evaluation is the best, when patience runs out, and
the recipe keys that need evaluations during training (the runs themselves: test_resume.py)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from framework.config import load_recipe
from framework.config.schema import EvalConfig
from framework.errors import UserError
from framework.training.best import track
from framework.training.checkpoints import TrainerState


def replay(losses: list[float], patience=None, min_delta: float = 0.0) -> tuple[list[bool], dict]:
    """track() after each evaluation of `losses` (one per step); what it answered and the final best."""
    held = EvalConfig(every_steps=1, early_stopping_patience=patience, min_delta=min_delta)
    run = SimpleNamespace(loaded=SimpleNamespace(recipe=SimpleNamespace(eval=held)), state=TrainerState(),
                          last_eval={})
    answers = []
    for step, loss in enumerate(losses, start=1):
        run.state.step, run.last_eval = step, {"eval_loss": loss}
        answers.append(track(run))
    return answers, run.state.best


def test_the_best_is_the_lowest_eval_loss_and_its_first_step():
    answers, best = replay([3.0, 2.0, 2.5, 2.0, 1.5, 1.7])
    assert not any(answers)  # no patience: never stops
    assert best == {"eval_loss": 1.5, "step": 5, "stale": 1}


def test_patience_counts_evaluations_since_the_best():
    losses = [3.0, 2.0, 2.1, 2.0, 2.2, 1.0]
    answers, best = replay(losses, patience=3)
    assert answers == [False, False, False, False, True, False]  # a tie is no improvement
    assert replay(losses[:5], patience=3)[1] == {"eval_loss": 2.0, "step": 2, "stale": 3}
    assert best == {"eval_loss": 1.0, "step": 6, "stale": 0}


def test_a_fall_smaller_than_min_delta_is_a_new_best_but_does_not_reset_patience():
    answers, best = replay([3.0, 2.95, 2.9, 2.0, 1.99], patience=2, min_delta=0.1)
    assert answers == [False, False, True, False, False]
    assert replay([3.0, 2.95, 2.9], patience=2, min_delta=0.1)[1] == {"eval_loss": 2.9, "step": 3, "stale": 2}
    assert best == {"eval_loss": 1.99, "step": 5, "stale": 1}


@pytest.mark.parametrize("key", ["eval.keep_best=true", "eval.early_stopping_patience=2"])
def test_keeping_the_best_or_stopping_early_needs_evaluations_during_training(key):
    repo = Path(__file__).resolve().parents[3]
    with pytest.raises(UserError, match=rf"{key.split('=')[0]}: needs eval.every_steps"):
        load_recipe(repo / "recipes/quickstart.yaml", ["eval.every_steps=null", key])
    assert load_recipe(repo / "recipes/quickstart.yaml", [key]).recipe.eval.every_steps == 125
