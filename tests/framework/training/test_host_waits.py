"""No host waits per micro-batch: on a GPU, each `.item()`, `nonzero`, boolean mask, copy to the host or
tensor made from Python data stalls the CPU until the GPU catches up. Counted on the CPU (tests/host_waits.py)
around real training of the quickstart SFT and DPO recipes: outside the model's own forward, a step makes
as many with 4 micro-batches as with 1, and seqtune's own code makes at most 2 a step when nothing is logged."""
from __future__ import annotations

import pytest

from framework.config import load_recipe
from framework.training.loop import train
from host_waits import per_step

pytestmark = pytest.mark.slow

SMALL_MODEL = ("model.config={model_type: llama, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, "
               "num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 512, tie_word_embeddings: true}")
RECIPES = {
    "sft": ("recipes/quickstart.yaml", ["data.mixture=[{source: recipes/quickstart/data/train.jsonl, count: 384}]"]),
    # the DPO recipe on a model built from a config (its own starts from the SFT run's output)
    "dpo": ("recipes/quickstart-dpo.yaml",
            ["data.mixture=[{source: recipes/quickstart/data/preferences.jsonl, count: 320, format: preference}]",
             "model.name_or_path=null", SMALL_MODEL, "tokenizer.name_or_path=recipes/quickstart/tokenizer"]),
}


def waits_per_step(tmp_path, objective: str, accumulation: int, *extra: str) -> list:
    recipe, overrides = RECIPES[objective]
    quiet = ["train.max_steps=6", "logging.every_steps=1000", "logging.loggers=[]", "eval=null",
             "checkpoint.every=1000", "plugins=[host_waits]"]
    out = tmp_path / f"{objective}-{accumulation}-{'-'.join(extra)}"
    loaded = load_recipe(recipe, [*overrides, *quiet, *extra, f"output_dir={out}", f"data.cache_dir={tmp_path / 'cache'}",
                                  f"train.gradient_accumulation_steps={accumulation}"])
    with per_step() as steps:
        train(loaded)
    assert len(steps) == 4
    return steps


@pytest.mark.parametrize("objective, extra", [("sft", ()), ("dpo", ("objective.reference=cached",)),
                                              ("dpo", ("objective.reference=live",))])
def test_host_waits_do_not_grow_with_accumulation(tmp_path, objective, extra, repo, monkeypatch):
    monkeypatch.chdir(repo)
    one, four = (waits_per_step(tmp_path, objective, gas, *extra) for gas in (1, 4))
    outside_model = [{owner: n for owner, n in step.items() if owner != "model"} for step in one + four]
    assert all(step == outside_model[0] for step in outside_model), outside_model
    assert all(step["seqtune"] <= 2 for step in one + four), one + four
