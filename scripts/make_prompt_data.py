"""Generate the quickstart's prompt sets for online RL (recipes/quickstart-grpo.yaml): one task question
each, with its reference answer, in the `{prompt, answer}` format of the `prompt_answer` reader.

The tasks are two of the quickstart's own (scripts/make_quickstart_data.py): reverse and sort, which have
thousands of distinct questions and which the quickstart SFT model answers right a quarter to a half of
the time (uppercase, repeat and next letter have a few dozen questions, all seen in SFT; additions it
almost never gets right, so their groups score all 0 and teach nothing); the held-out set shares no prompt with the training set or with the SFT conversations, so its accuracy is measured on questions the model
never trained on. Output is deterministic (fixed seed, stdlib only):

    python scripts/make_prompt_data.py
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from make_quickstart_data import reverse, sort_digits

SEED = 4321
TASKS = (reverse, sort_digits)


def questions(rng: random.Random, count: int, seen: set[str]) -> list[dict]:
    """`count` prompts not in `seen` (which grows with them), tasks in turn so each is as common."""
    rows = []
    while len(rows) < count:
        prompt, answer = TASKS[len(rows) % len(TASKS)](rng)
        if prompt not in seen:
            seen.add(prompt)
            rows.append({"prompt": prompt, "answer": answer})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("recipes/quickstart/data"))
    parser.add_argument("--train", type=int, default=1200)
    parser.add_argument("--eval", type=int, default=300)
    args = parser.parse_args()
    seen = {m["content"] for line in (args.data / "train.jsonl").read_text(encoding="utf-8").splitlines()
            for m in json.loads(line)["messages"] if m["role"] == "user"}
    rng = random.Random(SEED)
    held_out = questions(rng, args.eval, seen)  # first: the held-out set never loses a prompt to training
    train = questions(rng, args.train, seen)
    for name, rows in (("prompts.jsonl", train), ("prompts_eval.jsonl", held_out)):
        with (args.data / name).open("w", encoding="utf-8", newline="\n") as out:
            out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        print(f"wrote {len(rows)} prompts to {args.data / name}")


if __name__ == "__main__":
    main()
