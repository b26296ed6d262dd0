"""Loss normalisation, shown on the gradients of one optimizer step through the real engine.

SGD with lr 1 and no momentum makes the weight change of one step exactly minus the gradient, so
comparing saved weights compares gradients. The four rows differ in length, so a mean of
per-micro-batch means weighs their tokens differently from one global token mean.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROWS = "data.mixture=[{source: recipes/quickstart/data/train.jsonl, count: 4}]"
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def step_weights(seqtune, tmp_path):
    def run(reduction: str, batch: int, accumulation: int, lr: float = 1.0) -> dict[str, torch.Tensor]:
        out = tmp_path / f"{reduction}-{batch}x{accumulation}-{lr}"
        result = seqtune("train", "recipes/quickstart.yaml", f"output_dir={out}", ROWS, "train.max_steps=1",
                         f"train.loss_reduction={reduction}", f"train.per_device_batch_size={batch}",
                         f"train.gradient_accumulation_steps={accumulation}", "scheduler=constant",
                         f"optimizer={{name: sgd, lr: {lr}}}", "logging.loggers=[jsonl]")
        assert result.returncode == 0, result.stderr[-2000:]
        return load_file(str(out / "model.safetensors"))

    return run


def initial_weights() -> dict[str, torch.Tensor]:
    """The weights the engine starts from: the recipe's seed, then the model built from its config
    (an lr of 0 would be the other way to get them, and a recipe refuses it)."""
    from accelerate.utils import set_seed

    from framework.config import load_recipe
    from framework.model.loading import build_model
    from framework.model.tokenizer import load_tokenizer
    from framework.registry import build_registry

    recipe = load_recipe(REPO / "recipes/quickstart.yaml", [f"tokenizer.name_or_path={REPO / 'recipes/quickstart/tokenizer'}"]).recipe
    tokenizer = load_tokenizer(recipe, build_registry().entries["chat_templates"])
    set_seed(recipe.seed)
    return build_model(recipe, tokenizer).state_dict()


def max_difference(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
def test_token_mean_gives_the_same_step_for_any_split_of_the_batch_and_mean_does_not(step_weights):
    token_mean = max_difference(step_weights("token_mean", 4, 1), step_weights("token_mean", 1, 4))
    mean = max_difference(step_weights("mean", 4, 1), step_weights("mean", 1, 4))
    assert token_mean < 1e-6
    assert mean > 1e-4  # a mean of per-row means over rows of unequal lengths is another gradient


@pytest.mark.slow
def test_sum_is_open_instructs_reduce_loss_sum(step_weights):
    """Summed token losses, never divided by a token count; like open-instruct under accelerate's
    accumulate, each micro-batch's sum is divided by the accumulation steps."""
    start = initial_weights()
    whole = {k: v - start[k] for k, v in step_weights("sum", 4, 1).items()}
    split = {k: v - start[k] for k, v in step_weights("sum", 1, 4).items()}
    token_mean = {k: v - start[k] for k, v in step_weights("token_mean", 4, 1).items()}
    assert max_difference(whole, {k: 4 * v for k, v in split.items()}) < 1e-4
    ratios = [(whole[k].norm() / token_mean[k].norm()).item() for k in whole if token_mean[k].norm() > 0]
    assert min(ratios) == pytest.approx(max(ratios), rel=1e-3) and min(ratios) > 10  # the token count
