"""The GPU smoke runs: one recipe varied one setting at a time, measured, as JSON lines and a table.

    python scripts/gpu_smoke.py [--out output/gpu_smoke] [--steps 20] [--only NAME ...]

Trains recipes/gpu_smoke.yaml (a random ~0.48B Llama-style model, bf16, DeepSpeed ZeRO-2, one GPU) on
synthetic chat data written here (nothing is downloaded). The base run is bfd packing, `auto`
attention, the chunked loss, no gradient checkpointing, max_seq_length 4,096; each other run changes
one thing: max_seq_length 2,048 or 8,192, no packing, sdpa / flex_attention / flash_attention_2
(when flash-attn imports) attention, gradient checkpointing, the unchunked loss. Per run: tokens/s,
MFU and peak GPU memory (the mean over logged steps after the first), and the memory plan's estimate
for the same recipe (`seqtune check --gpu`; target: the peak within 10% of it).

Then the planner's promise, on a GPU capped at 24 GiB (`launch.gpu_memory_gib=24`): the base run at the
longest candidate length `seqtune plan --gpu 24` says fits, which must train, and at the next
candidate, which the plan says does not fit (what happened is reported; it does not fail the script).
Written to OUT/smoke.jsonl and OUT/smoke.md, and printed; exit 1 when a run that should train fails.
On a machine without a CUDA GPU it stops after the first run (which fails at its CUDA check) with one
line on stderr and exit status 3. The runs are `python -m framework.cli train`, with this interpreter.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = "recipes/gpu_smoke.yaml"
CAP_GIB = 24
NO_GPU = 3  # exit status: no CUDA GPU here, stopped after the first run
BASE = {"data.packing": "bfd", "model.attn_implementation": "auto", "train.loss": "chunked_cross_entropy",
        "model.gradient_checkpointing": "false", "data.max_seq_length": "4096"}


def variants() -> dict[str, dict[str, str]]:
    runs = {"base": {}, "len-2048": {"data.max_seq_length": "2048"}, "len-8192": {"data.max_seq_length": "8192"},
            "no-packing": {"data.packing": "none", "train.per_device_batch_size": "1"},
            "sdpa": {"model.attn_implementation": "sdpa"}, "flex": {"model.attn_implementation": "flex_attention"},
            "checkpointing": {"model.gradient_checkpointing": "true"}, "unchunked-loss": {"train.loss": "cross_entropy"}}
    if importlib.util.find_spec("flash_attn") is not None:
        runs["flash"] = {"model.attn_implementation": "flash_attention_2"}
    return runs


def capped(out: Path, steps: int) -> dict[str, dict[str, str]]:
    """The base run on a GPU capped at CAP_GIB, at the longest candidate length the plan says fits and
    at the next one."""
    from framework.estimation.sweep import CANDIDATES

    def plan(length: int) -> float:
        return planned_gib(overrides("plan", {"data.max_seq_length": str(length)}, out, steps))

    fitting = [length for length in CANDIDATES if plan(length) <= CAP_GIB]
    chosen = ([fitting[-1]] if fitting else []) + [n for n in CANDIDATES if n > max(fitting, default=0)][:1]
    return {f"cap{CAP_GIB}-{n}": {"data.max_seq_length": str(n), "launch.gpu_memory_gib": str(CAP_GIB)}
            for n in chosen}


def write_data(path: Path, rows: int = 6000) -> None:
    """Chats with log-normal message lengths (a long tail, as chat data has)."""
    rng = random.Random(0)
    words = "the model learns to answer questions about data tokens and long context windows".split()

    def say() -> str:
        return " ".join(rng.choice(words) for _ in range(max(1, int(rng.lognormvariate(5.0, 1.0)))))

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for _ in range(rows):
            out.write(json.dumps({"messages": [{"role": "user", "content": say()},
                                               {"role": "assistant", "content": say()}]}) + "\n")


def overrides(name: str, changes: dict[str, str], out: Path, steps: int) -> list[str]:
    settings = {**BASE, **changes, "output_dir": str(out / name), "overwrite_output_dir": "true",
                "train.max_steps": str(steps),
                "data.mixture": f"[{{source: {out / 'data.jsonl'}, fraction: 1.0}}]"}
    return [f"{key}={value}" for key, value in settings.items()]


def planned_gib(args: list[str]) -> float:
    from framework.config import load_recipe
    from framework.estimation.for_recipe import estimate_for_recipe
    from framework.model.loading import recipe_shape
    from framework.registry import build_registry

    loaded = load_recipe(RECIPE, args)  # model.config: its vocabulary is the tokenizer's, as in training
    return estimate_for_recipe(loaded, recipe_shape(loaded.recipe, build_registry())).total_gib


def measure(name: str, args: list[str], out: Path) -> dict:
    log = out / f"{name}.log"
    # The run starts in REPO (the recipe's paths are relative to it), where `-m` would put the checkout
    # first on sys.path; PYTHONSAFEPATH keeps the installed seqtune for it and the workers it launches.
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    with log.open("w") as sink:
        code = subprocess.run([sys.executable, "-m", "framework.cli", "train", RECIPE, *args], cwd=REPO, env=env,
                              stdout=sink, stderr=sink).returncode
    result = {"run": name, **{a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.split("=")[0] in BASE}}
    text = log.read_text()
    if "launch.gpu_memory_gib=" in " ".join(args):
        result["cap_gib"] = CAP_GIB
    if code:
        plan = planned_gib(args)
        return {**result, "planned_gib": round(plan, 2), "error": _last_error(text)[:300]}
    resolved = [line.split()[1] for line in text.splitlines() if line.startswith("attention: ")]
    result["model.attn_implementation"] += f" ({resolved[0]})" if resolved else ""
    records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in records if "loss" in r]
    logs = logs[1:] or logs  # the first window holds the warm-up
    mean = lambda key: sum(r.get(key) or 0 for r in logs) / len(logs)  # noqa: E731
    peak, plan = max(r["peak_memory_gib"] for r in logs), planned_gib(args)
    return {**result, "tokens_per_s": round(mean("tokens_per_s")), "mfu": round(mean("mfu"), 4),
            "peak_memory_gib": round(peak, 2), "planned_gib": round(plan, 2), "peak_over_plan": round(peak / plan, 3),
            "final_loss": round(logs[-1]["loss"], 4)}


def _last_error(text: str) -> str:
    """A failed run's last line, as seqtune prints a problem: `error: <it>`, or a bullet under a count."""
    return text.strip().splitlines()[-1].strip(" •").removeprefix("error: ")


def table(results: list[dict]) -> str:
    lines = ["| run | max_seq_length | packing | attention | checkpointing | loss | GPU cap GiB | tokens/s | MFU "
             "| peak GiB | planned GiB | peak / plan |",
             "| --- | ---: | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        cells = [r["run"], r["data.max_seq_length"], r["data.packing"], r["model.attn_implementation"],
                 r["model.gradient_checkpointing"], r["train.loss"], r.get("cap_gib", "")]
        if "error" in r:
            cells += [f"failed: {r['error']}", "", "", r.get("planned_gib", ""), ""]
        else:
            cells += [f"{r['tokens_per_s']:,}", f"{r['mfu']:.1%}", r["peak_memory_gib"], r["planned_gib"], r["peak_over_plan"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def installed() -> str:
    """Which seqtune and torch run here (the runs import the same ones)."""
    from importlib.metadata import version

    import torch

    import framework

    return (f"seqtune {version('seqtune')} from {framework.__path__[0]}, torch {torch.__version__}, "
            f"{cuda_gpus()} CUDA GPU(s)")


def cuda_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def run_all(runs: dict[str, dict[str, str]], out: Path, steps: int) -> list[dict]:
    """Each run in turn, printed and appended to smoke.jsonl as it ends; without a CUDA GPU, only the first
    (every other would fail at the same check)."""
    results = []
    with (out / "smoke.jsonl").open("w") as jsonl:
        for name, changes in runs.items():
            results.append(measure(name, overrides(name, changes, out, steps), out))
            print(json.dumps(results[-1]), flush=True)
            jsonl.write(json.dumps(results[-1]) + "\n")
            if not cuda_gpus():
                break
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "output/gpu_smoke")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--only", nargs="*", help="run only these (names from the module docstring's list)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"gpu_smoke: {installed()}", flush=True)
    write_data(args.out / "data.jsonl")
    runs = {**variants(), **capped(args.out, args.steps)}
    results = run_all({name: changes for name, changes in runs.items() if not args.only or name in args.only},
                      args.out, args.steps)
    (args.out / "smoke.md").write_text(table(results) + "\n")
    print(table(results))
    if results and not cuda_gpus():
        print(f"gpu_smoke: no CUDA GPU on this machine: stopped after the first run ({results[0]['run']}): "
              f"{results[0].get('error', 'it trained')}", file=sys.stderr)
        raise SystemExit(NO_GPU)
    if any("error" in r and r.get("planned_gib", 0) <= r.get("cap_gib", float("inf")) for r in results):
        raise SystemExit(1)  # a run failed that should have trained


if __name__ == "__main__":
    main()
