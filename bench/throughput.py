"""Training throughput of a tiny Llama-style model on the CPU: no packing against bfd.

    python bench/throughput.py [--epochs 1]

Two datasets, each trained twice in this one invocation (same rows, same epochs, same model),
reporting trainable tokens per second from the run summary (trainable tokens / training seconds).
The two runs get the same peak memory: a micro-batch is sized for its worst case, which for `none`
is batch x the longest row (that is what a user must fit), and for `bfd` is bins x max_seq_length.

- quickstart: recipes/quickstart.yaml as shipped (toy tasks, 20-74 tokens per row), max_seq_length
  128; `none` pads micro-batches of 16 rows (worst case 16 x 74 = 1,184 token slots), `bfd` packs
  9 bins of 128 (1,152 slots);
- long-tail: 1,500 synthetic conversations whose message lengths are log-normal (a chat-like long
  tail: median ~80 tokens per row, the longest at max_seq_length 512); `none` pads 8 rows (worst
  case 8 x 512), `bfd` packs 8 bins of 512.
Target: bfd at least 2x.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORDS = "the a model data token answer question reverse sort letter number word sun cat dog".split()


def long_tail_rows(path: Path, rows: int = 1500, seed: int = 0) -> None:
    rng = random.Random(seed)

    def text() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(max(1, int(rng.lognormvariate(3.0, 0.9)))))

    with path.open("w") as out:
        for _ in range(rows):
            out.write(json.dumps({"messages": [{"role": "user", "content": text()},
                                               {"role": "assistant", "content": text()}]}) + "\n")


def cases(tmp: Path) -> dict[str, dict[str, list[str]]]:
    data = tmp / "long_tail.jsonl"
    long_tail_rows(data)
    long = [f"data.mixture=[{{source: {data}, fraction: 1.0}}]", "data.max_seq_length=512"]
    return {
        "quickstart": {"none": ["data.packing=none", "train.per_device_batch_size=16"],
                       "bfd": ["data.packing=bfd", "train.per_device_batch_size=9"]},
        "long-tail": {"none": [*long, "data.packing=none", "train.per_device_batch_size=8"],
                      "bfd": [*long, "data.packing=bfd", "train.per_device_batch_size=8"]},
    }


def run(extra: list[str], out: Path, epochs: int) -> dict:
    exe = Path(sys.executable).with_name("seqtune")
    subprocess.run([str(exe), "train", "recipes/quickstart.yaml", f"output_dir={out}", f"train.epochs={epochs}",
                    "logging.every_steps=100000", "logging.loggers=[jsonl]", *extra],
                   cwd=REPO, check=True, capture_output=True)
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["summary"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for dataset, runs in cases(Path(tmp)).items():
            rates = {}
            for name, extra in runs.items():
                summary = run(extra, Path(tmp) / f"{dataset}-{name}", args.epochs)
                rates[name] = summary["trainable_tokens"] / summary["train_seconds"]
                print(f"{dataset:10} {name:4}: {summary['trainable_tokens']:,} trainable tokens in "
                      f"{summary['train_seconds']:6.2f} s = {rates[name]:7,.0f} tokens/s; {summary['steps']} "
                      f"steps; packing efficiency {summary['packing_efficiency']:.1%}")
            print(f"{dataset:10} bfd / none: {rates['bfd'] / rates['none']:.2f}x (target >= 2x)")


if __name__ == "__main__":
    main()
