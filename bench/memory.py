"""Peak memory of one training step on the CPU, measured against the planner, for the loss variants.

    python bench/memory.py [--lengths 1024 2048 4096] [--hidden 128] [--layers 2]

The model is a Gemma-2 (its 256,000-token vocabulary and final logit soft-capping) with a small
hidden size, in fp32 at micro-batch 1 with every token trained (the planner's worst case). Each row
runs in a fresh process: the model is built, then one forward+backward is taken (weights,
gradients, activations, the loss; no optimizer step), and its peak memory is the kernel's high-water
mark of resident memory (VmHWM) less the process's resident memory just before the model was built.
Two more steps are timed. Next to it, the planner's total for the same CPU run (fp32, no optimizer
states, no CUDA context or fragmentation overhead), and its `logits + loss` part.

Variants: `cross_entropy` (unchunked), `chunked` (chunked_cross_entropy, the default), and
`chunked + checkpointing`. Targets: at 2,048 tokens the chunked loss cuts the loss's share of the
peak (peak less the same run's peak with the loss left out) by at least 80%; the planner's total is
within 15% of the measured peak in every row; the chunked step at most 10% slower than the
unchunked. A row whose plan exceeds this machine's free memory is not run, and says so.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

VOCAB = 256_000
VARIANTS = {"cross_entropy": ("cross_entropy", False), "chunked": ("chunked_cross_entropy", False),
            "chunked + checkpointing": ("chunked_cross_entropy", True), "no loss": (None, False)}


def config(hidden: int, layers: int) -> dict:
    return {"model_type": "gemma2", "vocab_size": VOCAB, "hidden_size": hidden, "intermediate_size": 4 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": hidden // 4, "query_pre_attn_scalar": hidden // 4, "max_position_embeddings": 8192,
            "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0, "sliding_window": 8192,
            "tie_word_embeddings": True}


def status(key: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(key))
    return int(line.split()[1]) * 1024


def one_step(args: argparse.Namespace) -> None:
    """In a fresh process: the peak memory and the step time of one variant at one length."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from plugins import losses

    torch.manual_seed(0)
    loss_name, checkpointing = VARIANTS[args.variant]
    before = status("VmRSS")
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config(args.hidden, args.layers)),
                                             attn_implementation="eager", dtype=torch.float32).train()
    if checkpointing:
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    ids = torch.randint(0, VOCAB, (1, args.length))
    batch = {"input_ids": ids, "labels": ids.clone()}
    loss = getattr(losses, loss_name)() if loss_name else None

    def step() -> None:
        model.zero_grad(set_to_none=False)  # gradients stay allocated, as between optimizer steps
        if loss is None:  # the decoder alone, to its last hidden state: what the loss adds is the rest
            model.model(input_ids=ids).last_hidden_state.sum().backward()
        else:
            loss(model, batch)[0].backward()

    step()
    peak = status("VmHWM") - before
    started = time.perf_counter()
    for _ in range(2):
        step()
    print(json.dumps({"peak": peak, "seconds": (time.perf_counter() - started) / 2}))


def planned(variant: str, length: int, hidden: int, layers: int) -> tuple[int, int]:
    """(total, logits + loss part) the planner gives the same CPU run."""
    from framework.estimation.memory import estimate_memory
    from framework.estimation.settings import MemorySettings
    from framework.estimation.shapes import ModelShape
    from plugins.losses import chunk_tokens

    loss_name, checkpointing = VARIANTS[variant]
    chunked = loss_name == "chunked_cross_entropy"
    settings = MemorySettings(micro_batch=1, max_seq_length=length, gradient_checkpointing=checkpointing,
                              attn_implementation="eager",
                              optimizer_states=0, overhead_gib=0, overhead_fraction=0,
                              loss_chunk_tokens=chunk_tokens(VOCAB) if chunked else None,
                              loss_holds_head_gradient=chunked)
    estimate = estimate_memory(ModelShape.from_config(config(hidden, layers)), settings)
    return estimate.total, estimate.logits


def available() -> int:
    line = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemAvailable"))
    return int(line.split()[1]) * 1024


def measure(variant: str, length: int, args: argparse.Namespace) -> dict | None:
    total, _ = planned(variant, length, args.hidden, args.layers)
    if total > 0.8 * available():
        return None
    out = subprocess.run([sys.executable, __file__, "--one", variant, "--length", str(length), "--hidden",
                          str(args.hidden), "--layers", str(args.layers)], capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        raise SystemExit(f"{variant} at {length}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--one", choices=sorted(VARIANTS))
    parser.add_argument("--length", type=int)
    args = parser.parse_args()
    if args.one:
        args.variant = args.one
        return one_step(args)
    gib = 2**30
    print("| max_seq_length | loss | measured peak GiB | planned GiB | planned / measured | loss share GiB "
          "| planned loss GiB | step s |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for length in args.lengths:
        base = measure("no loss", length, args)
        for variant in ("cross_entropy", "chunked", "chunked + checkpointing"):
            total, loss_part = planned(variant, length, args.hidden, args.layers)
            got = measure(variant, length, args)
            if got is None:
                print(f"| {length:,} | {variant} | not run: planned {total / gib:.2f} GiB, more than 80% of the "
                      f"{available() / gib:.1f} GiB free here | {total / gib:.2f} | | | {loss_part / gib:.2f} | |")
                continue
            share = (got["peak"] - base["peak"]) / gib if base and variant != "chunked + checkpointing" else None
            print(f"| {length:,} | {variant} | {got['peak'] / gib:.2f} | {total / gib:.2f} | "
                  f"{total / got['peak']:.2f} | {'' if share is None else f'{share:.2f}'} | {loss_part / gib:.2f} | "
                  f"{got['seconds']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
