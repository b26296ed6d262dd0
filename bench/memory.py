"""Peak memory of one training step on the CPU, measured against the planner, for the loss variants.

    python bench/memory.py [--lengths 1024 2048 4096] [--hidden 128] [--layers 2]
    python bench/memory.py --model smollm2 [--lengths 512 1024 2048] [--variants LoRA QLoRA]
    python bench/memory.py --sequence-parallel 2 [--lengths 4096]

The model is a Gemma-2 (its 256,000-token vocabulary and final logit soft-capping) with a small
hidden size and eager attention, or with `--model smollm2` the real SmolLM2-135M-Instruct (30 layers,
a tied 49,152-token output layer, sdpa attention; scripts/prepare_smollm2.py makes its folder), in
fp32 at micro-batch 1 with every token trained (the planner's worst case). Each row
runs in a fresh process: the model is built, then one forward+backward is taken (weights,
gradients, activations, the loss; no optimizer step), and its peak memory is the kernel's high-water
mark of resident memory (VmHWM) less the process's resident memory just before the model was built.
The processes run with MALLOC_MMAP_THRESHOLD_=65536, so that glibc maps every tensor above 64 KiB on
its own and unmaps it when freed: resident memory is then the live tensors, as the planner counts
them. (With glibc's default, freed layer-sized buffers stay in its heap: a checkpointed SmolLM2 step
at 2,048 tokens shows 2.2-2.4 GiB resident against 1.4 GiB live.)
Two more steps are timed. Next to it, the planner's total for the same CPU run (fp32, no optimizer
states, no CUDA context or fragmentation overhead), and its `logits + loss` part.

Variants: `cross_entropy` (unchunked), `chunked` (chunked_cross_entropy, the default), and
`chunked + checkpointing`; on SmolLM2 also the chunked step with a rank-16 LoRA adapter on every linear
layer (peft, no dropout) over the fp32 model (`LoRA`) and over the model loaded in 4 bits by bitsandbytes
(`QLoRA`: NF4, double quantization, fp32 compute: bf16 matmuls are 20-50x slower on this CPU), each
with and without checkpointing (`--variants` picks variants by their first word). Targets (the Gemma-2
rows): at 2,048 tokens the chunked loss cuts the loss's share of the peak (peak less the same run's peak
with the loss left out) by at least 80%; the planner's total is within 15% of the measured peak in every
row; the chunked step at most 10% slower than the unchunked. QLoRA's rows: the plan within 15% of the
measured peak, and the peak below LoRA's. A row whose plan exceeds this machine's free memory is not run,
and says so.

`--sequence-parallel N` measures the chunked step split over N processes (torchrun, gloo: each holds 1/N of
the row, all-to-alls around the attention kernel) against the same step in one process; `--model llama`
(the synthetic model's sizes, Llama-shaped, sdpa) shows the split without Gemma-2 eager's dense masks: each process's peak
against the planner's (target: within 15%), and what each token of the row costs a process (the peak's
growth from half the length) against one process's (target: 1/N of it, plus the all-to-all copies).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

VOCAB = 256_000
VARIANTS = {"cross_entropy": ("cross_entropy", False), "chunked": ("chunked_cross_entropy", False),
            "chunked + checkpointing": ("chunked_cross_entropy", True), "no loss": (None, False),
            **{f"{adapter} chunked{more}": ("chunked_cross_entropy", bool(more))
               for adapter in ("LoRA", "QLoRA") for more in ("", " + checkpointing")}}
FULL = ("cross_entropy", "chunked", "chunked + checkpointing")
ADAPTED = tuple(name for name in VARIANTS if name.split()[0] in ("LoRA", "QLoRA"))  # SmolLM2 only
LORA_RANK = 16


def config(args: argparse.Namespace) -> dict:
    """The model's config as a dict: the synthetic Gemma-2's, or the prepared SmolLM2 folder's."""
    if args.model == "smollm2":
        return json.loads((smollm2_folder() / "config.json").read_text())
    hidden, layers = args.hidden, args.layers
    if args.model == "llama":  # the same sizes, Llama-shaped: sdpa's kernel (no dense mask) for one document a row
        return {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": hidden, "intermediate_size": 4 * hidden,
                "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 65536, "tie_word_embeddings": True}
    return {"model_type": "gemma2", "vocab_size": VOCAB, "hidden_size": hidden, "intermediate_size": 4 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": hidden // 4, "query_pre_attn_scalar": hidden // 4, "max_position_embeddings": 8192,
            "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0, "sliding_window": 8192,
            "tie_word_embeddings": True}


def smollm2_folder() -> Path:
    sys.path.insert(0, str(REPO / "scripts"))
    from prepare_smollm2 import DEFAULT_TARGET, prepare

    return prepare(REPO / DEFAULT_TARGET)


def attention(args: argparse.Namespace) -> str:
    return "eager" if args.model == "gemma2" else "sdpa"


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
    if args.variant in ADAPTED:  # their libraries' code is resident before the baseline, as torch's is
        for library in ("bitsandbytes", "peft"):
            importlib.import_module(library)
    before = status("VmRSS")
    if args.model == "smollm2":
        model = load_smollm2(args.variant, checkpointing)
        Path("/proc/self/clear_refs").write_text("5")  # the peak restarts from here: loading's copies are gone
    else:
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config(args)), attn_implementation=attention(args),
                                                 dtype=torch.float32).train()
        if checkpointing:
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, args.length))
    batch = {"input_ids": ids, "labels": ids.clone()}
    if args.split > 1:
        batch = split_batch(model, batch, args.split, attention(args))
    loss = getattr(losses, loss_name)() if loss_name else None

    def step() -> None:
        # as the engine's optimizer step leaves them: none, so the backward allocates them as it frees
        # the activations (the planner counts both at once, which holds under DeepSpeed ZeRO)
        model.zero_grad(set_to_none=True)
        if loss is None:  # the decoder alone, to its last hidden state: what the loss adds is the rest
            model.model(input_ids=ids).last_hidden_state.sum().backward()
        else:
            loss(model, batch)[0].backward()

    step()
    peak = status("VmHWM") - before
    started = time.perf_counter()
    for _ in range(2):
        step()
    found = {"peak": peak, "seconds": (time.perf_counter() - started) / 2}
    if args.split > 1:  # every process's figures, printed by the first
        import torch.distributed as dist

        every = [None] * args.split
        dist.all_gather_object(every, found)
        found = {"peak": max(f["peak"] for f in every), "seconds": max(f["seconds"] for f in every)}
        if dist.get_rank():
            return
    print(json.dumps(found))


def load_smollm2(variant: str, checkpointing: bool):
    """SmolLM2 in fp32, or in 4 bits for QLoRA, with a LoRA adapter for the LoRA and QLoRA variants,
    as the engine loads it (checkpointing enabled before the adapter, inputs made to require grad)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = None
    if variant.startswith("QLoRA"):
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(smollm2_folder(), attn_implementation="sdpa", dtype=torch.float32,
                                                 quantization_config=quantization).train()
    if checkpointing:
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    if variant in ADAPTED:
        from peft import LoraConfig, get_peft_model

        model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, lora_dropout=0.0,
                                                 target_modules="all-linear")).train()
    own_memory(model)
    return model


def own_memory(model) -> None:
    """Copy the tensors that are still views of the checkpoint's memory-mapped file into the process's own
    memory, so that the mapping closes: a 4-bit load reads every page of the fp32 file, which stays
    resident (0.4 GiB for SmolLM2) while the unquantized weights keep the mapping open, and would count
    in the peak as if it were tensors."""
    import gc

    import torch

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if getattr(tensor, "quant_state", None) is None:
                tensor.data = tensor.data.clone()
    gc.collect()


def split_batch(model, batch: dict, n: int, kernel: str) -> dict:
    """This process's part of the row, as the engine splits it (framework.training.sequence_parallel)."""
    import torch.distributed as dist

    from framework.model.heads import trained_positions
    from framework.model.ulysses import split_attention
    from framework.training.sequence_parallel import attach, make_groups, split

    dist.init_process_group("gloo")
    groups = make_groups(dist.get_rank(), n, n)
    split_attention(model, n)
    part = split(batch, groups, pad_token_id=0)
    part["trained_positions"] = trained_positions(part["shift_labels"], shifted=True)
    return attach(part, groups, kernel)


def planned(variant: str, length: int, args: argparse.Namespace, split: int = 1) -> tuple[int, int]:
    """(total, logits + loss part) the planner gives the same CPU run."""
    from framework.estimation.adapters import ALL_LINEAR, LoraSpec
    from framework.estimation.memory import estimate_memory
    from framework.estimation.quantization import QuantSpec
    from framework.estimation.settings import MemorySettings
    from framework.estimation.shapes import ModelShape
    from plugins.losses import chunk_tokens

    loss_name, checkpointing = VARIANTS[variant]
    chunked = loss_name == "chunked_cross_entropy"
    shape = ModelShape.from_config(config(args))
    adapted = variant in ADAPTED
    settings = MemorySettings(micro_batch=1, max_seq_length=length, gradient_checkpointing=checkpointing,
                              attn_implementation=attention(args),
                              optimizer_states=0, overhead_gib=0, overhead_fraction=0,
                              loss_chunk_tokens=chunk_tokens(shape.vocab_size) if chunked else None,
                              loss_holds_head_gradient=chunked, sequence_parallel=split,
                              lora=LoraSpec(LORA_RANK, ALL_LINEAR) if adapted else None,
                              quantization=QuantSpec(compute_dtype="float32") if variant.startswith("QLoRA") else None)
    estimate = estimate_memory(shape, settings)
    return estimate.total, estimate.logits


def available() -> int:
    line = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemAvailable"))
    return int(line.split()[1]) * 1024


def measure(variant: str, length: int, args: argparse.Namespace, split: int = 1) -> dict | None:
    total, _ = planned(variant, length, args, split)
    if total * split > 0.8 * available():
        return None
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable] if split == 1 else \
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={split}", f"--master_port={free_port()}"]
    out = subprocess.run([*launcher, __file__, "--one", variant, "--length", str(length), "--hidden",
                          str(args.hidden), "--layers", str(args.layers), "--model", args.model, "--split", str(split)],
                         capture_output=True, text=True, cwd=REPO, env=env)
    if out.returncode:
        raise SystemExit(f"{variant} at {length}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sequence_parallel_rows(args: argparse.Namespace) -> None:
    """One process against N sharing the row: peaks, plans, and what each token of the row costs (the
    peak's growth from half the length to the length: above a few hundred tokens the loss's chunk and
    everything else fixed are the same in both)."""
    gib, n, variant = 2**30, args.sequence_parallel, "chunked"
    print("| max_seq_length | processes sharing the row | measured peak GiB (per process) | planned GiB "
          "| planned / measured | KiB per token of the row | per token / one process's |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for length in args.lengths:
        alone = None
        for split in (1, n):
            got, half = measure(variant, length, args, split), measure(variant, length // 2, args, split)
            total, _ = planned(variant, length, args, split)
            if got is None or half is None:
                print(f"| {length:,} | {split} | not run: planned {total / gib:.2f} GiB per process | {total / gib:.2f} | | | |")
                continue
            per_token = (got["peak"] - half["peak"]) / (length - length // 2)
            alone = per_token if split == 1 else alone
            ratio = f"{per_token / alone:.2f}" if alone and split > 1 else ""
            print(f"| {length:,} | {split} | {got['peak'] / gib:.3f} | {total / gib:.3f} | {total / got['peak']:.2f} "
                  f"| {per_token / 1024:.1f} | {ratio} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("gemma2", "llama", "smollm2"), default="gemma2")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--variants", nargs="+", metavar="WORD", help="only the variants whose first word is one of "
                        "these (cross_entropy, chunked, LoRA, QLoRA); default: all the model has")
    parser.add_argument("--one", choices=sorted(VARIANTS))
    parser.add_argument("--length", type=int)
    parser.add_argument("--split", type=int, default=1, help=argparse.SUPPRESS)  # a --one step's processes
    parser.add_argument("--sequence-parallel", type=int, default=1, metavar="N",
                        help="measure the chunked step split over N processes against one process")
    args = parser.parse_args()
    if args.one:
        args.variant = args.one
        return one_step(args)
    if args.sequence_parallel > 1:
        return sequence_parallel_rows(args)
    gib = 2**30
    print("| max_seq_length | loss | measured peak GiB | planned GiB | planned / measured | loss share GiB "
          "| planned loss GiB | step s |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    variants = [v for v in FULL + (ADAPTED if args.model == "smollm2" else ())
                if args.variants is None or v.split()[0] in args.variants]
    for length in args.lengths:
        base = measure("no loss", length, args) if set(variants) & set(FULL[:2]) else None
        for variant in variants:
            total, loss_part = planned(variant, length, args)
            got = measure(variant, length, args)
            if got is None:
                print(f"| {length:,} | {variant} | not run: planned {total / gib:.2f} GiB, more than 80% of the "
                      f"{available() / gib:.1f} GiB free here | {total / gib:.2f} | | | {loss_part / gib:.2f} | |")
                continue
            share = (got["peak"] - base["peak"]) / gib if base and variant in FULL[:2] else None
            print(f"| {length:,} | {variant} | {got['peak'] / gib:.2f} | {total / gib:.2f} | "
                  f"{total / got['peak']:.2f} | {'' if share is None else f'{share:.2f}'} | {loss_part / gib:.2f} | "
                  f"{got['seconds']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
