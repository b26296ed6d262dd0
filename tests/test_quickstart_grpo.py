"""The GRPO demonstration, shortened: the quickstart SFT model trained by recipes/quickstart-grpo.yaml for
a third of its steps earns more reward as it trains, and answers more held-out questions right."""
from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_grpo_on_the_quickstart_model_raises_its_reward(tmp_path, repo, quickstart_sft):
    from seqtune_testing import tuned_quickstart

    sft, grpo = quickstart_sft, tuned_quickstart(quickstart_sft, "recipes/quickstart-grpo.yaml", tmp_path,
                                                 "train.max_steps=200")
    logs = [r for r in map(json.loads, (grpo / "metrics.jsonl").read_text().splitlines()) if "reward" in r]
    assert [r["step"] for r in logs] == [50, 100, 150, 200]
    assert logs[-1]["reward"] > logs[0]["reward"] + 0.05  # the sampled answers' exact-match reward rises
    assert all(r["kl"] > 0 and r["time/generation_s"] > 0 for r in logs)

    from seqtune_testing import load_script

    ask = load_script("scripts/ask")
    prompts = repo / "recipes/quickstart/data/prompts_eval.jsonl"
    before, after = (ask.accuracy(*ask.load(str(folder)), prompts) for folder in (sft, grpo))
    share = [sum(sum(hits) for hits in found.values()) / 300 for found in (before, after)]
    assert share[1] > share[0]  # greedy answers to questions it never saw: more of them right
