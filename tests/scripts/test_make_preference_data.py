"""scripts/make_preference_data.py: DPO pairs that differ only in the final answer, held-out prompts
unseen where the task has any left, and committed files that the script regenerates byte for byte."""
from __future__ import annotations

import json
import random

from seqtune_testing import REPO, load_script

mod = load_script("scripts/make_preference_data")
DATA = REPO / "recipes/quickstart/data"
# Tasks with thousands of prompts; uppercase, repeat and next letter have under 80 each, all of
# them in the SFT data, so their held-out prompts cannot be unseen.
ROOMY = ("Reverse:", "What is", "Sort:")


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_pairs(pairs: list[dict]) -> None:
    for pair in pairs:
        chosen, rejected = pair["chosen"], pair["rejected"]
        assert chosen[:-1] == rejected[:-1], pair
        assert chosen[-1]["role"] == rejected[-1]["role"] == "assistant", pair
        assert chosen[-1]["content"] != rejected[-1]["content"], pair
        assert chosen[-2]["role"] == "user", pair


def test_a_small_set_pairs_same_prompts_with_different_answers_and_holds_out_fresh_prompts(tmp_path, capsys):
    mod.main(["--train", "120", "--eval", "60", "--out-dir", str(tmp_path), "--seed", "9"])
    assert "preferences.jsonl: 120 pairs" in capsys.readouterr().out
    train, held_out = read(tmp_path / "preferences.jsonl"), read(tmp_path / "preferences_eval.jsonl")
    assert (len(train), len(held_out)) == (120, 60)
    check_pairs(train + held_out)

    seen = mod.user_prompts(read(DATA / "train.jsonl")) | mod.user_prompts(train)
    finals = [pair["chosen"][-2]["content"] for pair in held_out]
    roomy = [p for p in finals if p.startswith(ROOMY)]
    assert roomy and not any(p in seen for p in roomy)


def test_corruptions_always_differ_and_give_up_only_when_nothing_can_be_wrong():
    rng = random.Random(0)
    for task, corrupt in mod.CORRUPTIONS.items():
        for _ in range(300):
            _, answer = task(rng)
            wrong = corrupt(answer, rng)
            assert wrong is None or wrong != answer, (task.__name__, answer)
    assert mod.wrong_sort("3 3 3", rng) is None
    assert mod.wrong_next_letter("b", rng) == "c"  # after a: "b"; no letter before a, so two after
    assert mod.wrong_next_letter("z", rng) == "x"  # after y: two after y is past z


def test_the_committed_files_are_what_the_script_generates(tmp_path, capsys):
    mod.main(["--out-dir", str(tmp_path)])
    for name in ("preferences.jsonl", "preferences_eval.jsonl"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name
    check_pairs(read(DATA / "preferences.jsonl") + read(DATA / "preferences_eval.jsonl"))
