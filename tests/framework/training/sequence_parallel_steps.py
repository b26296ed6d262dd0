"""One sequence-parallel micro-batch against the same micro-batch unsplit, in every combination: run by
torchrun with N processes (gloo), it prints one JSON line per case with the relative differences of the
loss and of every gradient (the group's sum against the unsplit micro-batch's).

Each rank collates the same micro-batch twice through the engine's own `collate`: unsplit (every rank
computes the whole loss and its gradients alone) and split over the group (each rank its part). The loss
is scaled by the engine's `scale_loss` for each train.loss_reduction, and the gradients are then averaged
over the ranks as DDP does, so a wrong factor shows as a wrong gradient.

A case's fault breaks one thing on purpose, to show the comparison catches it: `double_shift` (labels shifted
again by a loss that shifts them itself), `cross_document` (the whole-row mask ignores document
boundaries), `no_share` (every rank reports a pair's whole loss: N times the gradient), `no_factor`
(mean and sum reductions not multiplied by N).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import zlib
from types import SimpleNamespace
from unittest.mock import patch

import torch
import torch.distributed as dist

from framework.model import ulysses
from framework.model.ulysses import split_attention
from framework.training import sequence_parallel, steps
from framework.training.loss import scale_loss
from framework.training.sequence_parallel import Groups, make_groups
from framework.types import IGNORE_INDEX, Sample
from plugins import dpo as dpo_module
from plugins.dpo import dpo
from plugins.losses import chunked_cross_entropy, cross_entropy
from plugins.objectives import sft
from plugins.packing import bfd, none

VOCAB, PAD = 61, 0
MODELS = {
    "llama": ("llama", {"num_attention_heads": 4, "num_key_value_heads": 2}),
    "llama_one_kv": ("llama", {"num_attention_heads": 4, "num_key_value_heads": 1}),
    "gemma2": ("gemma2", {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "sliding_window": 7,
                          "final_logit_softcapping": 30.0, "query_pre_attn_scalar": 8}),
}


def build(kind: str, attention: str, n: int, layout: str) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, shape = MODELS[kind]
    options = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
               "max_position_embeddings": 256, "pad_token_id": PAD, **shape}
    if model_type == "gemma2":  # soft-capped attention scores (eager has them)
        options["attn_logit_softcapping"] = 20.0
        if layout == "none":  # transformers' own unsplit float64 eager mask turns a padding run longer than the
            options["sliding_window"] = 64  # window into NaN (float64's min is -inf in its fp32 softmax)
    torch.manual_seed(0)
    dtype = torch.float32 if attention == "flex_attention" else torch.float64  # flex's CPU kernel: fp32
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **options),
                                             attn_implementation=attention, dtype=dtype)
    if n > 1:
        split_attention(model, n)
    return model


def samples(objective: str, count: int, seed: int) -> list[Sample]:
    """Rows of varied length with a masked prompt; pairs for dpo (a shared prompt, two answers)."""
    rng = random.Random(seed)

    def sequence(prompt: list[int]) -> tuple[list[int], list[int]]:
        answer = [rng.randrange(1, VOCAB) for _ in range(rng.randrange(2, 12))]
        return prompt + answer, [IGNORE_INDEX] * len(prompt) + answer

    out = []
    for _ in range(count):
        prompt = [rng.randrange(1, VOCAB) for _ in range(rng.randrange(1, 9))]
        if objective == "sft":
            out.append(Sample(*sequence(prompt)))
        else:
            (ci, cl), (ri, rl) = sequence(prompt), sequence(prompt)
            out.append(Sample(ci + ri, cl + rl, (len(ci), len(ri))))
    return out


def prep_for(objective: str, layout: str, attention: str, groups: Groups, rows: list[list[Sample]]) -> SimpleNamespace:
    made = sft() if objective == "sft" else dpo(loss="dpo_norm" if layout == "padding_free" else "sigmoid")
    return SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=PAD), groups=groups, objective=made,
                           packing=none() if layout == "none" else bfd(), padding_free=layout == "padding_free",
                           attention=attention, token_capacity=0, data=SimpleNamespace(take=lambda _: rows))


def packed_rows(objective: str, layout: str, kind: str) -> list[list[Sample]]:
    rows = [[s] for s in samples(objective, 6, seed=zlib.crc32(f"{kind} {layout} {objective}".encode()))]
    if layout != "none":  # packed: several documents a row, which straddle the ranks' parts
        rows = [rows[0] + rows[1] + rows[2], rows[3] + rows[4] + rows[5]]
    return rows


def make_loss(name: str):
    return chunked_cross_entropy(memory_mib=0.002) if name == "chunked" else cross_entropy()  # chunks of a few tokens


def add_reference(batch, rows: list, objective: str) -> None:
    if objective == "dpo":  # a fixed reference: the loss still compares the pairs' sides
        batch.tensors["reference_logps"] = torch.full((sum(map(len, rows)), 2), -20.0, dtype=torch.float64)


def gradients(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def varlen_flash(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None,
                 softcap=None, cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """What flash-attention's variable-length kernel computes (causal attention inside each document of one
    row of documents end to end), in sdpa, standing in for flash_attention_2 on the CPU: the wrapper's
    flattening, the whole rows' boundaries and the kernel's own name reach it as they would flash's."""
    from transformers.integrations.sdpa_attention import repeat_kv

    assert module.config._attn_implementation == "flash_attention_2" and query.size(0) == 1
    assert attention_mask is None and sliding_window is None and cu_seq_lens_q is not None and max_length_q
    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    out = torch.empty_like(query)
    bounds = cu_seq_lens_q.tolist()
    for start, stop in zip(bounds, bounds[1:]):
        out[:, :, start:stop] = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:stop], key[:, :, start:stop], value[:, :, start:stop], is_causal=True, scale=scaling)
    return out.transpose(1, 2), None


def case(kind: str, attention: str, layout: str, objective: str, loss_name: str, groups: Groups,
         no_factor: bool = False) -> dict:
    if attention == "flash_attention_2":  # the split model's kernel; the unsplit one runs sdpa
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        with patch.dict(ALL_ATTENTION_FUNCTIONS._global_mapping, {"flash_attention_2": varlen_flash}):
            return {**exact_case(kind, "sdpa", layout, objective, loss_name, groups, no_factor, "flash_attention_2"),
                    "attention": attention}
    return exact_case(kind, attention, layout, objective, loss_name, groups, no_factor)


def exact_case(kind: str, attention: str, layout: str, objective: str, loss_name: str, groups: Groups,
               no_factor: bool = False, split_kernel: str | None = None) -> dict:
    if attention == "flex_attention":  # no backward on the CPU: the loss without gradients (evaluation)
        return evaluation_case(kind, attention, layout, objective, loss_name, groups)
    n = groups.size
    rows, token_loss = packed_rows(objective, layout, kind), make_loss(loss_name)
    found = {}
    whole_model, split_model = build(kind, attention, 1, layout), build(kind, attention, n, layout)
    for reduction in ("token_mean", "mean", "sum"):
        results = []
        for model, gs in ((whole_model, Groups()), (split_model, groups)):
            prep = prep_for(objective, layout, split_kernel if gs.size > 1 and split_kernel else attention, gs, rows)
            batch = steps.collate(prep, [list(range(len(row))) for row in rows], "cpu")
            add_reference(batch, rows, objective)
            loss_sum, _ = prep.objective.loss(model, batch.tensors, token_loss)
            units = torch.tensor(float(batch.units), dtype=torch.float64)
            step_units = units.clone()
            dist.all_reduce(step_units, group=gs.group) if gs.size > 1 else None
            factor = 1 if no_factor else gs.size
            world = gs.size
            scaled = scale_loss(loss_sum, batch.whole_units, step_units, 1, reduction, 1, world, factor)
            grads = gradients(model, scaled)
            total = loss_sum.detach().clone()
            if gs.size > 1:
                dist.all_reduce(total, group=gs.group)
                for g in grads:  # DDP: the mean over the ranks
                    dist.all_reduce(g, group=gs.group)
                    g /= world
            results.append((total, grads))
        (whole_loss, whole_grads), (split_loss, split_grads) = results
        found[reduction] = max(relative(split_loss, whole_loss),
                               max(relative(a, b) for a, b in zip(split_grads, whole_grads)))
    return {"model": kind, "attention": attention, "layout": layout, "objective": objective, "loss": loss_name,
            "difference": max(found.values()), "by_reduction": found}


def evaluation_case(kind: str, attention: str, layout: str, objective: str, loss_name: str, groups: Groups) -> dict:
    rows = packed_rows(objective, layout, kind)
    losses = []
    for gs in (Groups(), groups):
        model, prep = build(kind, attention, gs.size, layout), prep_for(objective, layout, attention, gs, rows)
        batch = steps.collate(prep, [list(range(len(row))) for row in rows], "cpu")
        add_reference(batch, rows, objective)
        with torch.no_grad():
            total, _ = prep.objective.loss(model, batch.tensors, make_loss(loss_name))
        if gs.size > 1:
            dist.all_reduce(total, group=gs.group)
        losses.append(total)
    return {"model": kind, "attention": attention, "layout": layout, "objective": objective, "loss": loss_name,
            "difference": relative(losses[1], losses[0]), "by_reduction": {}}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def broken(fault: str | None):
    """Each known sequence-parallel bug, put back in for one case (None: nothing broken)."""
    split, mask = sequence_parallel.split, ulysses._whole_row_mask

    def shifted_twice(*args, **kwargs):  # a loss that shifts the engine's shifted labels again
        out = split(*args, **kwargs)
        labels = out["shift_labels"]
        out["shift_labels"] = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], 1)
        return out

    def one_document(shards, *args):  # positions taken as one document a row: documents see each other
        whole, alone = shards.positions, shards.one_document_per_row
        shards.positions, shards.one_document_per_row = torch.arange(whole.size(1)).expand_as(whole), True
        try:
            return mask(shards, *args)
        finally:
            shards.positions, shards.one_document_per_row = whole, alone

    patches = {"double_shift": patch.object(steps, "split", shifted_twice),
               "cross_document": patch.object(ulysses, "_whole_row_mask", one_document),
               "no_share": patch.object(dpo_module, "rank_share", lambda batch: 1.0)}
    return patches.get(fault, contextlib.nullcontext())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", required=True,
                        help="JSON list of [model, attention, layout, objective, loss, fault or null]")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    groups = make_groups(dist.get_rank(), dist.get_world_size(), dist.get_world_size())
    for *spec, fault in json.loads(args.cases):
        with broken(fault):
            result = {**case(*spec, groups, fault == "no_factor"), "fault": fault}
        if dist.get_rank() == 0:
            print(json.dumps(result), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
