"""GRPO on a real model on the CPU: what a step costs at SmolLM2-135M-Instruct's size, generation against learning.

    python bench/grpo.py [--steps 6] [--questions 4] [--generations 8] [--max-new-tokens 32]
                         [--variants full full-no-kl lora]

recipes/quickstart-grpo.yaml with the prepared SmolLM2-135M-Instruct folder (scripts/prepare_smollm2.py)
as the policy: each step samples `--generations` answers to each of `--questions` task questions
(`transformers` generator: batched, KV cache, temperature 1.0), scores them with exact match, and takes
one AdamW step (fp32, one process on every core, lr 1e-6). Variants: `full` (every weight trains;
beta 0.04, so a frozen copy of the starting model scores the KL term), `full-no-kl` (beta 0: no
reference), `lora` (rank-16 adapters on every linear layer without dropout, as recipes/smollm2/lora.yaml;
beta 0.04: the reference is the same model with its adapters off, no copy). Each variant runs in a fresh process.

Per variant, over steps 2..N (the first step's warm-up left out): seconds per step, the part spent
generating and scoring (`time/generation_s`) and learning (`time/learning_s`: the forward and backward
of the policy, the reference's forward, the optimizer step), completion tokens sampled per second of
generation, the mean completion length, and the process's peak resident memory (loading included).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_model import REPO, measured, model_folder  # noqa: E402 (bench/ is not a package)

VARIANTS = {"full": ["objective.beta=0.04"], "full-no-kl": ["objective.beta=0.0"],
            "lora": ["objective.beta=0.04", "lora={r: 16, alpha: 32, dropout: 0.0, target_modules: all-linear}"]}


def run(model: Path, out: Path, variant: str, args: argparse.Namespace) -> dict:
    overrides = [f"output_dir={out}", f"model.name_or_path={model}", f"tokenizer.name_or_path={model}",
                 f"objective.num_generations={args.generations}", f"objective.max_new_tokens={args.max_new_tokens}",
                 f"data.max_seq_length={args.max_new_tokens + 64}", f"train.per_device_batch_size={args.questions}",
                 f"train.max_steps={args.steps}", "optimizer.lr=1e-6", "logging.every_steps=1",
                 "logging.loggers=[jsonl]", "eval=null", *VARIANTS[variant]]
    seqtune = Path(sys.executable).with_name("seqtune")
    peak = measured([str(seqtune), "train", str(REPO / "recipes/quickstart-grpo.yaml"), *overrides])
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:-1]  # steps 2..N
    completions = args.questions * args.generations
    mean = {key: sum(log[key] for log in logs) / len(logs)
            for key in ("time/generation_s", "time/learning_s", "completion_length", "reward")}
    return {"step_s": (logs[-1]["time"] - logs[0]["time"]) / max(len(logs) - 1, 1),
            "generation_s": mean["time/generation_s"], "learning_s": mean["time/learning_s"],
            "sampled_per_s": mean["completion_length"] * completions / mean["time/generation_s"],
            "completion_length": mean["completion_length"], "reward": mean["reward"], "peak_gb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--questions", type=int, default=4, help="prompts per step")
    parser.add_argument("--generations", type=int, default=8, help="answers sampled per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    model = model_folder()
    print(f"SmolLM2-135M-Instruct, {args.questions} questions x {args.generations} answers per step, "
          f"at most {args.max_new_tokens} new tokens, steps 2..{args.steps}")
    print("\n| variant | s/step | generation s | learning s | sampled tokens/s | completion tokens | peak RSS (GB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            r = run(model, Path(tmp) / variant, variant, args)
            print(f"| {variant} | {r['step_s']:.2f} | {r['generation_s']:.2f} | {r['learning_s']:.2f} | "
                  f"{r['sampled_per_s']:,.0f} | {r['completion_length']:.1f} | {r['peak_gb']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
