"""Synthetic chat data shaped like the Tulu 3 SFT mixture, for the data benchmarks.

    python bench/synthetic_chats.py OUT.jsonl --rows 200000

Each row is {"messages": [...]} with 1-3 user/assistant exchanges (a system message in a tenth of
them); message lengths are log-normal, so most are short and a few are very long, as in real chat
data; about 600 tokens per row with the Qwen2.5 tokenizer. Written fast (one `json.dumps` per row,
buffered), deterministic for a seed.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

WORDS = ("the a model learns to answer questions about data pipelines tokens masks long context windows "
         "while packing sequences efficiently and training loss gradients steps of an optimizer with "
         "weight decay 42 3.14 2048 résumé naïve café 数据 表 😀 def f(x): return x ** 2 # comment "
         "In this section we describe how the results were obtained and why they matter. However, "
         "Let's think step by step. First, Second, Finally, the answer is").split()


def message(rng: random.Random, median_words: float) -> str:
    words = max(1, min(4000, int(rng.lognormvariate(0, 1.0) * median_words)))
    return " ".join(rng.choices(WORDS, k=words))


def row(rng: random.Random) -> dict:
    messages = [{"role": "system", "content": message(rng, 20)}] if rng.random() < 0.1 else []
    for _ in range(rng.choice((1, 1, 2, 3))):
        messages += [{"role": "user", "content": message(rng, 48)},
                     {"role": "assistant", "content": message(rng, 105)}]
    return {"messages": messages}


def write(path: Path, rows: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", buffering=1 << 20) as out:
        for _ in range(rows):
            out.write(json.dumps(row(rng), ensure_ascii=False) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write(args.out, args.rows, args.seed)
    print(f"wrote {args.rows:,} rows to {args.out}")


if __name__ == "__main__":
    main()
