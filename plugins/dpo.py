"""Preference tuning: the `dpo` objective and the preference row formats.

A pair is two conversations with the same prompt turns that differ in their final assistant turn.
Each side is encoded with the chat template, only its final assistant turn trained, and stored end
to end (chosen, then rejected) as one row of two sequences. A pair longer than max_seq_length on a
side is cut by `data.truncation`: `right` (or `left`, `turns`) cuts the shared prompt from the left
first, keeping at least half of max_seq_length of it, then both responses from the right; `drop`
drops the pair; `raise` stops at it. A pair with a side left without a trained token is dropped and
counted (`data.untrainable`).

In a micro-batch both sides of every pair run in one forward: as two documents of one packed row
(bfd), or as two rows (no packing, chosen rows first). The loss compares each side's summed
log-probability of its trained tokens under the model being trained (the policy) with the frozen
starting model (the reference), which the engine provides live or from a cache (`reference`):

* `sigmoid`: -log sigmoid(beta * h) (the DPO paper), where h = (policy - reference)(chosen) -
  (policy - reference)(rejected); with `label_smoothing` e, (1 - e) of that plus e of -log sigmoid(-beta * h)
  (conservative DPO);
* `ipo`: (h - 1 / (2 beta))^2 (IPO);
* `hinge`: max(0, 1 - beta * h) (SLiC);
* `dpo_norm`: `sigmoid` on log-probabilities averaged over each side's trained tokens (open-instruct's
  choice for Tulu 3);
* `simpo`: -log sigmoid(beta * (avg policy(chosen) - avg policy(rejected)) - gamma), with label
  smoothing as `sigmoid`: no reference at all (SimPO).

Rewards are beta * (policy - reference) of a side (beta * policy for simpo), on the loss's
normalisation; rewards/accuracy counts a pair whose chosen reward is higher as 1 and a tie as 1/2 (at
the first step every pair ties: 0.5, not 0). `train.loss_reduction` divides by pairs.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Literal

from framework import (EMPTY, IGNORE_INDEX, Bounds, Pair, Sample, UserError, add_row, encode_rows, hookimpl,
                       rank_share, sequence_sum, target_values, trained_index, trained_token_logps)
from plugins.formats import check_messages

NORMALISED = ("dpo_norm", "simpo")  # losses on log-probabilities averaged over a side's trained tokens
Loss = Literal["sigmoid", "ipo", "hinge", "dpo_norm", "simpo"]


# -- formats ------------------------------------------------------------------------------------

def preference(row: dict) -> Pair:
    """`chosen` and `rejected`: message lists with the same prompt turns (Tulu 3's and UltraFeedback's
    preference sets)."""
    return _pair(check_messages(row.get("chosen"), "chosen"), check_messages(row.get("rejected"), "rejected"))


def preference_text(row: dict) -> Pair:
    """`prompt`, `chosen` and `rejected` strings: one user turn and the two answers."""
    texts = {}
    for column in ("prompt", "chosen", "rejected"):
        if not isinstance(row.get(column), str) or not row[column]:
            raise ValueError(f"needs a non-empty string column '{column}'")
        texts[column] = row[column]
    prompt = [{"role": "user", "content": texts["prompt"]}]
    return Pair(prompt + [{"role": "assistant", "content": texts["chosen"]}],
                prompt + [{"role": "assistant", "content": texts["rejected"]}])


def _pair(chosen: list[dict], rejected: list[dict]) -> Pair:
    for side, messages in (("chosen", chosen), ("rejected", rejected)):
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError(f"'{side}' must end with an assistant turn (the answer the pair compares)")
    if chosen[:-1] != rejected[:-1]:
        at = next((k for k, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)) - 1)
        raise ValueError(f"chosen and rejected differ before their final assistant turn (message {at}); the "
                         "two sides of a pair share their prompt turns")
    return Pair(chosen, rejected)


# -- the loss -----------------------------------------------------------------------------------

def preference_loss(kind: str, policy, reference, counts, beta: float, label_smoothing: float = 0.0,
                    gamma: float = 0.0):
    """Per pair: (loss, chosen reward, rejected reward). `policy` and `reference` are (pairs, 2) summed
    log-probabilities of (chosen, rejected), `counts` their trained tokens; reference None for simpo."""
    import torch.nn.functional as F

    if kind in NORMALISED:
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

    def __init__(self, loss: str, beta: float, label_smoothing: float, gamma: float, reference: str,
                 memory_mib: float):
        self.kind, self.beta, self.label_smoothing, self.gamma = loss, beta, label_smoothing, gamma
        self.reference = ("none" if loss == "simpo" else "cached") if reference == "auto" else reference
        self.memory_mib = memory_mib

    def encoder(self, tokenizer, truncate, max_seq_length, train_on, template, untrainable):
        if train_on == "all":
            raise UserError("data.train_on: all: objective dpo trains the final assistant turn of each side of a "
                            "pair; remove data.train_on (or set last_assistant)")
        cut = _cut_rule(truncate)

        def encode(rows, where):
            _refuse_single(rows, where)
            sides = [messages for chosen, _, rejected in rows for messages in (chosen, rejected)]
            encoded = encode_rows(tokenizer, sides, [None] * len(sides), "last_assistant", lambda k: where(k // 2),
                                  template)
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
                                                   self.label_smoothing, self.gamma)
        sides = policy.detach()
        metrics = {"rewards/chosen": chosen.sum(), "rewards/rejected": rejected.sum(),
                   "rewards/accuracy": ((chosen > rejected).sum() + 0.5 * (chosen == rejected).sum()), "rewards/margin": (chosen - rejected).sum(),
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
    """The shared untrained tokens both sides start with."""
    n = 0
    for a, b, la, lb in zip(chosen.input_ids, rejected.input_ids, chosen.labels, rejected.labels):
        if a != b or la != IGNORE_INDEX or lb != IGNORE_INDEX:
            break
        n += 1
    return n


def _cut(side: Sample, start: int, max_seq_length: int) -> Sample:
    kept = Sample(side.input_ids[start:start + max_seq_length], side.labels[start:start + max_seq_length])
    kept.labels[0] = IGNORE_INDEX  # a cut sequence starts anywhere: its first token is unpredicted
    return kept


def dpo(*, loss: Loss = "sigmoid", beta: Annotated[float, Bounds(gt=0)] = 0.1,
        label_smoothing: Annotated[float, Bounds(ge=0, lt=0.5)] = 0.0, gamma: Annotated[float, Bounds(ge=0)] = 0.0,
        reference: Literal["auto", "live", "cached", "none"] = "auto",
        memory_mib: Annotated[float, Bounds(gt=0)] = 512) -> DPO:
    """Direct preference optimisation and its variants (see the module). `reference`: auto is cached,
    or none for simpo; `memory_mib` bounds one chunk's logits when scoring sequences."""
    return DPO(loss, beta, label_smoothing, gamma, reference, memory_mib)


def _check(*, loss, reference, label_smoothing, gamma, **_):
    if loss == "simpo" and reference in ("live", "cached"):
        yield "reference", "simpo is reference-free: leave reference unset (or none)"
    if loss != "simpo" and reference == "none":
        yield "reference", f"loss {loss} compares with a reference model: set reference to cached or live"
    if gamma and loss != "simpo":
        yield "gamma", "gamma is SimPO's target margin: set loss: simpo, or remove gamma"
    if label_smoothing and loss in ("ipo", "hinge"):
        yield "label_smoothing", f"loss {loss} has no label smoothing: use sigmoid, dpo_norm or simpo"


preference.columns = ("chosen", "rejected")  # declared: `seqtune check` names the missing ones
preference_text.columns = ("prompt", "chosen", "rejected")
dpo.check = _check
dpo.sequences_per_row = 2


@hookimpl
def seqtune_register_objectives():
    return {"dpo": dpo}


@hookimpl
def seqtune_register_dataset_formats():
    return {"preference": preference, "preference_text": preference_text}
