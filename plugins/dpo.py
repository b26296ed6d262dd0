"""Preference tuning: the `dpo` objective (its row formats: plugins/preference.py).

A pair is two conversations with the same prompt turns that differ in their final assistant turn.
Each side is encoded with the chat template and stored end to end (chosen, then rejected) as one row
of two sequences. Trained: each side's final assistant turn (`data.train_on: auto`, as TRL), or every
assistant turn (`assistant`, as open-instruct: the shared earlier turns then count in averaged losses).
A pair longer than max_seq_length on a side is cut by `data.truncation`: `right` (or `left`, `turns`)
cuts the shared context from the left first, keeping at least half of max_seq_length of it, then both
responses from the right; `drop` drops the pair; `raise` stops at it. A pair with a side left without
a trained token is dropped and counted (`data.untrainable`).

In a micro-batch both sides of every pair run in one forward: as two documents of one packed row
(bfd), or as two rows (no packing, chosen rows first). The loss compares each side's log-probability
of its trained tokens (summed, or averaged over them: `logps`) under the model being trained (the
policy) with the frozen starting model (the reference), which the engine provides live or from a
cache (`reference`):

* `sigmoid`: -log sigmoid(beta * h) (the DPO paper), where h = (policy - reference)(chosen) -
  (policy - reference)(rejected); with `label_smoothing` e, (1 - e) of that plus e of -log sigmoid(-beta * h)
  (conservative DPO);
* `ipo`: (h - 1 / (2 beta))^2 (IPO), on averaged log-probabilities by default as TRL computes it
  (`logps: sum` is the paper's form);
* `hinge`: max(0, 1 - beta * h) (SLiC);
* `dpo_norm`: `sigmoid` on averaged log-probabilities (open-instruct's choice for Tulu 3);
* `simpo`: -log sigmoid(beta * (avg policy(chosen) - avg policy(rejected)) - gamma), with label
  smoothing as `sigmoid`: no reference at all (SimPO).

Rewards are beta * (policy - reference) of a side (beta * policy for simpo), on the loss's
normalisation; rewards/accuracy counts the pairs whose chosen reward is higher, a tie as 0 (as TRL and
open-instruct: the first step, where the model is its own reference, reads 0). `train.loss_reduction`
divides by pairs.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Literal

from framework import (EMPTY, IGNORE_INDEX, Bounds, Sample, UserError, add_row, encode_rows, hookimpl,
                       rank_share, sequence_sum, target_values, trained_index, trained_token_logps)

# Losses on each side's log-probability averaged over its trained tokens by default (`logps: auto`):
# dpo_norm and simpo by definition, ipo as TRL computes it (the IPO paper sums)
AVERAGED = ("ipo", "dpo_norm", "simpo")
Loss = Literal["sigmoid", "ipo", "hinge", "dpo_norm", "simpo"]


# -- the loss -----------------------------------------------------------------------------------

def preference_loss(kind: str, policy, reference, counts, beta: float, label_smoothing: float = 0.0,
                    gamma: float = 0.0, averaged: bool | None = None):
    """Per pair: (loss, chosen reward, rejected reward). `policy` and `reference` are (pairs, 2) summed
    log-probabilities of (chosen, rejected), `counts` their trained tokens; reference None for simpo.
    `averaged`: divide each side's by its trained tokens first (None: as `logps: auto` does)."""
    import torch.nn.functional as F

    if kind in AVERAGED if averaged is None else averaged:
        policy = policy / counts
        reference = None if reference is None else reference / counts
    if kind == "simpo":
        chosen, rejected = beta * policy[:, 0], beta * policy[:, 1]
        logits = chosen - rejected - gamma
    else:
        chosen, rejected = beta * (policy[:, 0] - reference[:, 0]), beta * (policy[:, 1] - reference[:, 1])
        logits = chosen - rejected
    if kind == "ipo":
        losses = (logits / beta - 1 / (2 * beta)) ** 2
    elif kind == "hinge":
        losses = F.relu(1 - logits)
    else:
        losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, chosen.detach(), rejected.detach()


# -- the objective ------------------------------------------------------------------------------

class DPO:
    sequence_parallel = True  # its loss and counts hold when rows are split over a group
    sequences_per_row = 2
    sequence_names = ("chosen", "rejected")  # how `seqtune check --samples` labels a pair's sequences
    label_keys = ("sequence_index",)  # per-token keys about the predicted token, shifted like the labels
    uses_token_loss = False  # it scores sequences with trained_token_logps (memory_mib), not train.loss
    unit = "pair"

    train_on = "last_assistant"  # data.train_on: auto; `assistant` scores every assistant turn (open-instruct)

    def __init__(self, loss: str, beta: float, label_smoothing: float, gamma: float, reference: str,
                 memory_mib: float, logps: str = "auto"):
        self.kind, self.beta, self.label_smoothing, self.gamma = loss, beta, label_smoothing, gamma
        self.averaged = loss in AVERAGED if logps == "auto" else logps == "mean"
        self.reference = ("none" if loss == "simpo" else "cached") if reference == "auto" else reference
        self.memory_mib = memory_mib

    def encoder(self, tokenizer, truncate, max_seq_length, train_on, template, untrainable):
        if train_on == "all":
            raise UserError("data.train_on: all: objective dpo trains the assistant turns of each side of a pair: "
                            "remove data.train_on (the final turn), or set assistant (every assistant turn)")
        cut = _cut_rule(truncate)

        def encode(rows, where):
            _refuse_single(rows, where)
            sides = [messages for chosen, _, rejected in rows for messages in (chosen, rejected)]
            encoded = encode_rows(tokenizer, sides, [None] * len(sides), train_on, lambda k: where(k // 2), template)
            out = defaultdict(list)
            for i in range(len(rows)):
                chosen, rejected = encoded[2 * i], encoded[2 * i + 1]
                kept, cause = _kept(chosen, rejected, max_seq_length, cut, where(i))
                if cause is not None and untrainable == "error":
                    raise UserError(f"{where(i)}: a side of this pair has no token left to train ({cause.replace('_', ' ')}"
                                    "; data.untrainable: error, 'drop' drops and counts such pairs)")
                add_row(out, kept, _joined(chosen, rejected), cause)
            return out

        return encode

    def collate(self, rows, packing, pad_token_id, padding_free):
        """Both sides of each pair in one forward; which side each token belongs to (`sequence_index`, a
        per-token key the engine shifts with the labels under sequence parallelism: `label_keys`), and
        each side's trained tokens."""
        import torch

        samples = [sample for row in rows for sample in row]
        if not all(sample.sequences for sample in samples):  # a rank's empty filler
            tensors = packing.collate(rows, pad_token_id, padding_free)
            return {**tensors, "sequence_index": torch.full_like(tensors["labels"], IGNORE_INDEX),
                    "sequence_tokens": torch.zeros(0, dtype=torch.long), "sequence_slot": torch.zeros(0, dtype=torch.long)}
        sides = [sample.split() for sample in samples]
        if packing.packs_rows:  # chosen and rejected as two documents of the pair's row
            layout = [[side for sample in row for side in sample.split()] for row in rows]
            order = [(p, s) for p in range(len(samples)) for s in (0, 1)]
        else:  # one sequence per row: every chosen, then every rejected
            layout = [[pair[s]] for s in (0, 1) for pair in sides]
            order = [(p, s) for s in (0, 1) for p in range(len(samples))]
        tensors = packing.collate(layout, pad_token_id, padding_free)
        slots = [2 * p + s for p, s in order]
        tensors["sequence_index"] = _sequence_index(layout, slots, tensors["input_ids"].shape, padding_free)
        tensors["sequence_tokens"] = torch.tensor([sides[p][s].num_trainable for p, s in order])
        tensors["sequence_slot"] = torch.tensor(slots)
        return tensors

    def units(self, rows, tensors):
        return len(tensors["sequence_slot"]) // 2

    def sequence_logps(self, model, batch):
        """(pairs, 2): each side's summed log-probability of its trained tokens (over the whole
        sequence-parallel group, where the tokens are shared out)."""
        tokens = trained_token_logps(model, batch, self.memory_mib)
        slots = target_values(batch, "sequence_index", trained_index(batch))
        sums = tokens.new_zeros(len(batch["sequence_slot"])).index_add(0, slots, tokens)
        return sequence_sum(sums, batch).view(-1, 2)

    def loss(self, model, batch, token_loss):
        policy = self.sequence_logps(model, batch)
        counts = batch["sequence_tokens"].new_zeros(len(batch["sequence_slot"])).index_copy(
            0, batch["sequence_slot"], batch["sequence_tokens"]).view(-1, 2).to(policy.dtype)
        reference = batch.get("reference_logps")
        reference = None if reference is None else reference.to(policy.dtype)
        losses, chosen, rejected = preference_loss(self.kind, policy, reference, counts, self.beta,
                                                   self.label_smoothing, self.gamma, self.averaged)
        sides = policy.detach()
        metrics = {"rewards/chosen": chosen.sum(), "rewards/rejected": rejected.sum(),
                   "rewards/accuracy": (chosen > rejected).sum(), "rewards/margin": (chosen - rejected).sum(),
                   "logps/chosen": sides[:, 0].sum(), "logps/rejected": sides[:, 1].sum()}
        # Every rank of a sequence-parallel group holds the same pairs: each reports its share
        share = rank_share(batch)
        metrics = {name: value * share for name, value in metrics.items()}
        return losses.sum() * share + 0 * policy.sum(), metrics  # 0 * ...: an empty filler still reaches every weight


def _sequence_index(layout, slots, shape, padding_free):
    """(rows, length): the slot (2 x pair + side) of the sequence each token belongs to, IGNORE_INDEX on
    padding; `slots` follow the sequences of `layout` in order, as collate placed them."""
    import torch

    rows = [[side for row in layout for side in row]] if padding_free else layout
    index = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    slot = iter(slots)
    for r, row in enumerate(rows):
        at = 0
        for side in row:
            index[r, at:at + len(side.input_ids)] = next(slot)
            at += len(side.input_ids)
    return index


def _refuse_single(rows, where) -> None:
    for i, (_, _, rejected) in enumerate(rows):
        if rejected is None:
            raise UserError(f"{where(i)}: objective dpo trains preference pairs and this row is not one: give its "
                            "source format: preference ({chosen, rejected} messages) or preference_text")


def _cut_rule(truncate) -> str:
    """How data.truncation applies to a pair: fit (cut it), drop, or raise."""
    name = getattr(getattr(truncate, "func", truncate), "__name__", "")
    rules = {"right": "fit", "left": "fit", "turns": "fit", "drop": "drop", "refuse": "raise"}
    if name not in rules:
        raise UserError(f"data.truncation: objective dpo cuts pairs with right, left or turns (the prompt from the "
                        f"left first, then both answers from the right), drop or raise, not '{name}'")
    return rules[name]


def _joined(chosen: Sample, rejected: Sample) -> Sample:
    return Sample(chosen.input_ids + rejected.input_ids, chosen.labels + rejected.labels,
                  (len(chosen.input_ids), len(rejected.input_ids)))


def _kept(chosen: Sample, rejected: Sample, max_seq_length: int, cut: str, where: str) -> tuple[Sample, str | None]:
    """What is kept of a pair (EMPTY when dropped) and why it was dropped."""
    if not chosen.num_trainable or not rejected.num_trainable:
        return EMPTY, "no_trainable_token"
    longest = max(len(chosen.input_ids), len(rejected.input_ids))
    if longest <= max_seq_length:
        return _joined(chosen, rejected), None
    if cut == "raise":
        raise UserError(f"{where}: a side of this pair has {longest:,} tokens, more than max_seq_length "
                        f"{max_seq_length:,} (truncation: raise); raise max_seq_length or choose another truncation")
    if cut == "drop":
        return EMPTY, "cut_by_truncation"
    prompt = _prompt_length(chosen, rejected)
    keep = max(max_seq_length - (longest - prompt), min(prompt, max_seq_length // 2))
    sides = [_cut(side, prompt - keep, max_seq_length) for side in (chosen, rejected)]
    if not all(side.num_trainable for side in sides):
        return EMPTY, "cut_by_truncation"
    return _joined(*sides), None


def _prompt_length(chosen: Sample, rejected: Sample) -> int:
    """The context both sides share, which a cut shortens from the left: their common tokens up to the
    last untrained one (the final turn's header). Earlier assistant turns, trained under data.train_on:
    assistant, are the same on both sides: shared context too."""
    common = shared = 0
    for a, b, la, lb in zip(chosen.input_ids, rejected.input_ids, chosen.labels, rejected.labels):
        if a != b or la != lb:
            break
        common += 1
        shared = common if la == IGNORE_INDEX else shared
    return shared


def _cut(side: Sample, start: int, max_seq_length: int) -> Sample:
    kept = Sample(side.input_ids[start:start + max_seq_length], side.labels[start:start + max_seq_length])
    kept.labels[0] = IGNORE_INDEX  # a cut sequence starts anywhere: its first token is unpredicted
    return kept


def dpo(*, loss: Loss = "sigmoid", beta: Annotated[float, Bounds(gt=0)] = 0.1,
        label_smoothing: Annotated[float, Bounds(ge=0, lt=0.5)] = 0.0, gamma: Annotated[float, Bounds(ge=0)] = 0.0,
        reference: Literal["auto", "live", "cached", "none"] = "auto",
        logps: Literal["auto", "sum", "mean"] = "auto", memory_mib: Annotated[float, Bounds(gt=0)] = 512) -> DPO:
    """Direct preference optimisation and its variants (see the module). `reference`: auto is cached,
    or none for simpo; `logps`: each side's log-probability summed over its trained tokens or averaged
    (auto: averaged for ipo, dpo_norm and simpo, as the reference implementations do); `memory_mib`
    bounds one chunk's logits when scoring sequences."""
    return DPO(loss, beta, label_smoothing, gamma, reference, memory_mib, logps)


def _check(*, loss, reference, label_smoothing, gamma, logps="auto", **_):
    if loss == "simpo" and reference in ("live", "cached"):
        yield "reference", "simpo is reference-free: leave reference unset (or none)"
    if loss != "simpo" and reference == "none":
        yield "reference", f"loss {loss} compares with a reference model: set reference to cached or live"
    if gamma and loss != "simpo":
        yield "gamma", "gamma is SimPO's target margin: set loss: simpo, or remove gamma"
    if label_smoothing and loss in ("ipo", "hinge"):
        yield "label_smoothing", f"loss {loss} has no label smoothing: use sigmoid, dpo_norm or simpo"
    if logps == "sum" and loss in ("dpo_norm", "simpo"):
        yield "logps", f"loss {loss} averages each side's log-probability by definition: for sums, use sigmoid"
    if logps == "mean" and loss == "sigmoid":
        yield "logps", "sigmoid on averaged log-probabilities is loss: dpo_norm; set that instead"

dpo.check = _check
dpo.sequences_per_row = 2


@hookimpl
def seqtune_register_objectives():
    return {"dpo": dpo}

