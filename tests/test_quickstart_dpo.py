"""The DPO demonstration end to end: the quickstart SFT model preference-tuned by
recipes/quickstart-dpo.yaml learns to prefer the right answers, on the training pairs and held out."""
from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_dpo_on_the_quickstart_model_learns_to_prefer_right_answers(tmp_path, repo, quickstart_sft):
    from seqtune_testing import tuned_quickstart

    sft, dpo = quickstart_sft, tuned_quickstart(quickstart_sft, "recipes/quickstart-dpo.yaml", tmp_path)
    logs = [r for r in map(json.loads, (dpo / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert logs[0]["rewards/accuracy"] < 0.7 and logs[-1]["rewards/accuracy"] >= 0.9  # from below 0.5 (the first step ties: 0)
    assert logs[-1]["loss"] < logs[0]["loss"] / 2

    from seqtune_testing import load_script

    ask = load_script("scripts/ask")
    pairs = repo / "recipes/quickstart/data/preferences_eval.jsonl"
    before, after = (ask.held_out_pairs(*ask.load(str(folder)), pairs) for folder in (sft, dpo))
    assert after.mean() > before.mean() + 3  # the held-out margin for right answers grows
    assert ((after - before) > 0).float().mean() > 0.7  # DPO's held-out reward accuracy
