"""SmolLM2-135M-Instruct fine-tuned by seqtune and by TRL's SFTTrainer, side by side, on the CPU.

    python bench/real_model.py [--steps 15] [--repeats 2] [--modes padded packed] [--rows 600]
    python bench/real_model.py --adapters [--steps 15] [--repeats 2]

One invocation runs both tools on the same model folder (scripts/prepare_smollm2.py), the same rows
(single-turn quickstart tasks: a user question and the assistant's answer, the answer trained), the
same optimizer steps and batch geometry (8 rows of at most 128 tokens per step, padded to the
longest row; or 8 packed sequences of 128 tokens, best-fit decreasing), fp32, AdamW at a constant
1e-4, gradient clipping at 1.0, no gradient checkpointing, one process on every core. The runs
alternate (seqtune, TRL, seqtune, TRL, ...) so that drifting machine load hits both alike; each is a
fresh process. Needs the `bench` extra (trl) and the model package (`bash scripts/setup.sh test`).

Per run: seconds per optimizer step (the mean over steps 2..N, leaving out the first step's warm-up),
real (non-padding) tokens per second over the whole loop, the process's peak resident memory
(the kernel's high-water mark, so loading the model counts too), and the first and last step's loss.
Targets: seqtune's seconds per step at most 0.85x TRL's and its peak memory at most TRL's.

Equal work, with two differences each tool chose: TRL packs a micro-batch's sequences into one
padding-free row (a 1,024-token row whose attention mask is block-diagonal), seqtune keeps its 8
rows of 128; and TRL computes two metrics every step (entropy, token accuracy). Data order differs
(each tool shuffles with its own generator), so losses agree only roughly.

`--adapters` runs seqtune alone: recipes/smollm2/lora.yaml against recipes/smollm2/qlora.yaml (the same
rank-16 adapters on the base loaded in 4 bits), packed, same rows and steps. Target: QLoRA's seconds per
step at most 1.3x LoRA's.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BATCH, MAX_LEN, LR = 8, 128, 1e-4


def model_folder() -> Path:
    sys.path.insert(0, str(REPO / "scripts"))
    from prepare_smollm2 import DEFAULT_TARGET, prepare

    return prepare(REPO / DEFAULT_TARGET).resolve()


def write_rows(path: Path, rows: int) -> None:
    """The first `rows` single-turn conversations of the quickstart set (no system turn)."""
    chats = (json.loads(line)["messages"] for line in (REPO / "recipes/quickstart/data/train.jsonl").open())
    single = [m for m in chats if len(m) == 2 and m[0]["role"] == "user"]
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in single[:rows]))


def run_seqtune(model: Path, data: Path, out: Path, steps: int, packed: bool, recipe: str = "sft.yaml") -> dict:
    overrides = [f"output_dir={out}", f"model.name_or_path={model}", f"data.mixture=[{{source: {data}, fraction: 1.0}}]",
                 f"data.packing={'bfd' if packed else 'none'}", f"train.per_device_batch_size={BATCH}",
                 f"train.max_steps={steps}", "train.epochs=100", "train.clip_grad_norm=1.0",
                 f"optimizer.lr={LR}", "scheduler={name: constant}", "logging.every_steps=1",
                 "logging.loggers=[jsonl]"]
    seqtune = Path(sys.executable).with_name("seqtune")
    peak = measured([str(seqtune), "train", str(REPO / "recipes/smollm2" / recipe), *overrides])
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logs, summary = lines[:-1], lines[-1]["summary"]
    return {"step_s": (logs[-1]["time"] - logs[0]["time"]) / (len(logs) - 1),
            "tokens_per_s": summary["tokens"] / summary["train_seconds"], "peak_gb": peak,
            "first_loss": logs[0]["loss"], "last_loss": logs[-1]["loss"]}


def run_trl(model: Path, data: Path, out: Path, steps: int, packed: bool) -> dict:
    result = out / "result.json"
    peak = measured([sys.executable, __file__, "--trl-child", json.dumps(
        {"model": str(model), "data": str(data), "out": str(out), "steps": steps, "packed": packed})])
    return {**json.loads(result.read_text()), "peak_gb": peak}


def measured(command: list[str]) -> float:
    """Run a command to its end; its peak resident memory in GB (raises if it fails)."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status:
        raise SystemExit(f"failed: {' '.join(command[:3])}\n{stderr.decode()[-3000:]}")
    return usage.ru_maxrss * 1024 / 1e9


def trl_child(spec: dict) -> None:
    """In a fresh process: TRL's SFTTrainer on the same rows, steps and geometry."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    chats = [json.loads(line)["messages"] for line in Path(spec["data"]).read_text().splitlines()]
    # prompt/completion rows: TRL trains the completion only, as seqtune trains the assistant turn
    dataset = Dataset.from_list([{"prompt": m[:1], "completion": m[1:]} for m in chats])
    stamps: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    config = SFTConfig(
        output_dir=spec["out"], max_steps=spec["steps"], per_device_train_batch_size=BATCH, max_length=MAX_LEN,
        packing=spec["packed"], learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, gradient_checkpointing=False, bf16=False, fp16=False,
        logging_steps=1, save_strategy="no", report_to=[], seed=7, dataloader_num_workers=0)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32),
                         args=config, train_dataset=dataset,
                         processing_class=AutoTokenizer.from_pretrained(spec["model"]), callbacks=[StepTimes()])
    start = time.perf_counter()
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    tokens = trainer.state.log_history[-2].get("num_tokens") or trainer.state.num_input_tokens_seen
    (Path(spec["out"]) / "result.json").write_text(json.dumps({
        "step_s": (stamps[-1] - stamps[0]) / (len(stamps) - 1), "tokens_per_s": tokens / (stamps[-1] - start),
        "first_loss": losses[0], "last_loss": losses[-1]}))


def report(results: dict[tuple[str, str], list[dict]]) -> None:
    print("\n| mode | tool | s/step | tokens/s | peak RSS (GB) | loss step 1 -> last |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for (mode, tool), runs in results.items():
        mean = {key: sum(run[key] for run in runs) / len(runs) for key in runs[0]}
        print(f"| {mode} | {tool} | {mean['step_s']:.2f} | {mean['tokens_per_s']:,.0f} | {mean['peak_gb']:.2f} | "
              f"{mean['first_loss']:.3f} -> {mean['last_loss']:.3f} |")
    for mode in dict.fromkeys(mode for mode, _ in results):
        ours, theirs = ({key: sum(r[key] for r in results[mode, tool]) / len(results[mode, tool])
                         for key in ("step_s", "peak_gb")} for tool in ("seqtune", "TRL"))
        print(f"{mode}: seqtune/TRL time per step {ours['step_s'] / theirs['step_s']:.2f}x (target <= 0.85x), "
              f"peak memory {ours['peak_gb'] / theirs['peak_gb']:.2f}x (target <= 1.00x)")


def adapters(model: Path, data: Path, tmp: Path, args: argparse.Namespace) -> None:
    """seqtune's LoRA recipe against its QLoRA recipe (the same adapters on a 4-bit base), packed."""
    results: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        for recipe in ("lora.yaml", "qlora.yaml"):
            result = run_seqtune(model, data, tmp / f"{recipe}-{repeat}", args.steps, True, recipe)
            results.setdefault(recipe, []).append(result)
            print(f"{recipe:10} run {repeat + 1}: " + json.dumps({k: round(v, 3) for k, v in result.items()}), flush=True)
    print("\n| recipe | s/step | tokens/s | peak RSS (GB) | loss step 1 -> last |")
    print("| --- | ---: | ---: | ---: | --- |")
    mean = {recipe: {key: sum(run[key] for run in runs) / len(runs) for key in runs[0]} for recipe, runs in results.items()}
    for recipe, m in mean.items():
        print(f"| {recipe} | {m['step_s']:.2f} | {m['tokens_per_s']:,.0f} | {m['peak_gb']:.2f} | "
              f"{m['first_loss']:.3f} -> {m['last_loss']:.3f} |")
    print(f"QLoRA/LoRA time per step {mean['qlora.yaml']['step_s'] / mean['lora.yaml']['step_s']:.2f}x (target <= 1.3x), "
          f"peak memory {mean['qlora.yaml']['peak_gb'] / mean['lora.yaml']['peak_gb']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rows", type=int, default=600, help="enough for --steps packed steps")
    parser.add_argument("--modes", nargs="+", choices=("padded", "packed"), default=["padded", "packed"])
    parser.add_argument("--adapters", action="store_true",
                        help="instead: seqtune's recipes/smollm2/lora.yaml against qlora.yaml (packed)")
    parser.add_argument("--trl-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_child:
        return trl_child(json.loads(args.trl_child))
    model = model_folder()
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.jsonl"
        write_rows(data, args.rows)
        if args.adapters:
            return adapters(model, data, Path(tmp), args)
        for repeat in range(args.repeats):
            for mode in args.modes:
                for tool, run in (("seqtune", run_seqtune), ("TRL", run_trl)):
                    out = Path(tmp) / f"{tool}-{mode}-{repeat}"
                    result = run(model, data, out, args.steps, mode == "packed")
                    results.setdefault((mode, tool), []).append(result)
                    print(f"{mode:6} {tool:7} run {repeat + 1}: " + json.dumps({k: round(v, 3) for k, v in result.items()}),
                          flush=True)
    report(results)


if __name__ == "__main__":
    main()
