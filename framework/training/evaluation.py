"""Held-out evaluation: the recipe's `eval` rows, scored with the training objective and loss plugin
every `eval.every_steps` optimizer steps and at the end.

The evaluation set is its own mixture (`eval.mixture`, prepared and cached like the training data),
or a seeded share of the training mixture's distinct rows held out before training (`eval.split`), so
no held-out row is ever trained on. Its micro-batches are laid out by the recipe's packing strategy
and dealt out to every rank as training's are (a rank that runs out scores an empty filler). The loss
is exact: the summed loss of every micro-batch of every rank over the units (trainable tokens, or
pairs) of all of them, one mean over the whole set, not a mean of batch means.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Optional

from framework.data.batching import shard
from framework.data.pipeline import PreparedData, prepare_data
from framework.data.progress import progress_bar
from framework.training.outputs import say

SPLIT_FILE = "eval_split.json"  # the held-out rows of eval.split, by source and row: "recorded in the run"


@dataclasses.dataclass
class EvalSet:
    """The held-out rows and this rank's micro-batches of them."""

    data: PreparedData
    micro_batches: list  # this rank's; None: an empty filler
    rows: list[dict] = dataclasses.field(default_factory=list)  # eval.split: the held-out rows' sources


def eval_data(loaded: Any, parts: Any, tokenizer: Any, objective: Any, data: PreparedData, main_first: Any
              ) -> tuple[PreparedData, Optional[PreparedData], list[dict]]:
    """(the training rows, the held-out rows or None, where held-out rows of eval.split came from)."""
    recipe = loaded.recipe
    if recipe.eval is None:
        return data, None, []
    if recipe.eval.split is not None:
        return split_off(data, recipe.eval.split, recipe.seed)
    mixture = dataclasses.replace(recipe.data, mixture=recipe.eval.mixture)
    held = prepare_data(dataclasses.replace(recipe, data=mixture), parts.eval_loaders, parts.eval_formats,
                        parts.truncation, tokenizer, main_first, objective)
    say(f"eval data{' (cached)' if held.from_cache else ''}: {held.report.summary()}")
    return data, held, []


def split_off(data: PreparedData, split: float, seed: int) -> tuple[PreparedData, PreparedData, list[dict]]:
    """Hold out a seeded share (split < 1) or count (split >= 1) of the distinct rows: every copy of a
    held-out row leaves training, and it is evaluated once."""
    import numpy as np

    distinct = data.dataset._indices.column("indices").to_numpy() if data.dataset._indices is not None \
        else np.arange(len(data.dataset))
    ids = np.unique(distinct)
    count = int(split) if split >= 1 else max(1, round(split * len(ids)))
    if count >= len(ids):
        from framework.errors import UserError

        raise UserError(f"eval.split: {split:g} holds out {count:,} of the {len(ids):,} distinct rows left to "
                        "train on; hold out fewer")
    held_ids = np.random.default_rng(seed).choice(ids, size=count, replace=False)
    held = np.isin(distinct, held_ids)
    first = np.unique(distinct[held], return_index=True)[1]  # one copy of each held-out row
    evaluated = np.flatnonzero(held)[np.sort(first)]
    trained = np.flatnonzero(~held)
    say(f"eval.split: {count:,} of {len(ids):,} distinct rows held out ({int(held.sum()):,} rows of the "
        f"mixture), {len(trained):,} left to train on")
    return _subset(data, trained), _subset(data, evaluated), _origins(data, distinct[evaluated])


def _subset(data: PreparedData, positions: Any) -> PreparedData:
    lengths = [data.lengths[i] for i in positions.tolist()]
    return dataclasses.replace(data, dataset=data.dataset.select(positions), lengths=lengths)


def _origins(data: PreparedData, distinct: Any) -> list[dict]:
    """The data.mixture entry and 1-based source row of each held-out row, for the run's record."""
    unique, _ = data.plan.distinct()  # the distinct rows the cache holds, in its order
    return [{"source": int(unique.source[d]), "row": int(unique.index[d]) + 1} for d in distinct.tolist()]


def eval_set(prep: Any, held: Optional[PreparedData], rank: int, world: int, rows: list[dict]) -> Optional[EvalSet]:
    """This rank's evaluation micro-batches, laid out as training lays its rows out."""
    if held is None:
        return None
    recipe = prep.loaded.recipe
    batch = recipe.eval.per_device_batch_size or recipe.train.per_device_batch_size
    row_tokens = held.max_seq_length * prep.objective.sequences_per_row
    plan = prep.packing.plan(held.lengths, batch, row_tokens, recipe.seed)
    return EvalSet(held, shard(plan, rank, world), rows)


def record_split(output_dir: Path, evaluation: Optional[EvalSet]) -> None:
    if evaluation is not None and evaluation.rows:
        (output_dir / SPLIT_FILE).write_text(json.dumps(evaluation.rows) + "\n")


def evaluate(run: Any) -> dict[str, float]:
    """The loss (and the objective's metrics) over the whole evaluation set, on every rank."""
    import torch

    from framework.training.steps import collate, prefetched

    evaluation, accelerator, reference = run.evaluation, run.accelerator, run.eval_reference
    prep = dataclasses.replace(run.prep, data=evaluation.data)
    totals: dict[str, Any] = {"loss": 0.0, "units": 0}
    run.model.eval()
    tokens = sum(evaluation.data.lengths[piece if isinstance(piece, int) else piece[0]]
                 for micro_batch in evaluation.micro_batches if micro_batch for row in micro_batch for piece in row)
    batches = prefetched(iter(evaluation.micro_batches), lambda pieces: collate(prep, pieces, accelerator.device, reference))
    with torch.no_grad(), progress_bar("evaluating", tokens, unit="tokens") as advance:
        for batch in batches:
            advance(batch.tokens)
            if reference is not None and reference.live is not None:
                batch.tensors["reference_logps"] = reference.live(batch.tensors)
            loss_sum, metrics = run.loss(run.model, batch.tensors)
            totals["loss"] += loss_sum.detach().double()
            totals["units"] += batch.units
            for name, value in metrics.items():
                totals[name] = totals.get(name, 0.0) + value.detach().double()
    run.model.train()
    return _reduced(totals, accelerator, run.prep.objective)


def _reduced(totals: dict[str, Any], accelerator: Any, objective: Any) -> dict[str, float]:
    import torch

    names = sorted(name for name in totals if name not in ("loss", "units"))
    local = torch.tensor([float(totals["loss"]), totals["units"], *(float(totals[n]) for n in names)],
                         dtype=torch.float64, device=accelerator.device)
    loss, units, *sums = accelerator.reduce(local, "sum").tolist()
    metrics = {"eval_loss": loss / max(units, 1)}
    if getattr(objective, "unit", "token") == "token":
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 700))
    metrics.update({f"eval_{name}": value / max(units, 1) for name, value in zip(names, sums)})
    return metrics
