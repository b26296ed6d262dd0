"""The reference an objective compares with (DPO): the starting model's log-probabilities of every
sequence of a micro-batch, as `batch["reference_logps"]` (rows x sequences, no gradient).

`live` scores each micro-batch as it trains: with LoRA the trained model with its adapter disabled
(no copy at all), else a frozen copy of the starting model (sharded like the model under ZeRO-3).
`cached` scores every row once before training, with the same layout the first epoch trains with,
and keeps the numbers next to the preprocessing cache, keyed by the model, the data and the
precision, so a second run, a resumed run and every process read them instead. Both use the
objective's own `sequence_logps`, so they give the same numbers.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

from framework.data.batching import shard
from framework.data.progress import progress_bar
from framework.data.sources import local_fingerprint
from framework.training.outputs import say

Scorer = Callable[[dict], Any]  # a micro-batch's tensors -> (rows, sequences) log-probabilities


@dataclass
class Reference:
    """Where a micro-batch's reference log-probabilities come from: a table of every row's, looked up on
    the host while the micro-batch is collated (cached), or the reference model scoring it on the device
    (live)."""

    table: Any = None  # rows x sequences, float64, on the CPU
    live: Optional[Scorer] = None


def make_references(loaded: Any, prep: Any, accelerator: Any, model: Any) -> tuple[Optional[Reference], ...]:
    """The reference of the training micro-batches, and of the evaluation ones; (None, None) when the
    objective has none. One frozen copy serves both (built only when a number must be computed: a cached
    run whose tables exist builds none)."""
    mode = prep.objective.reference
    if mode == "none":
        return None, None
    score = functools.cache(lambda: _scorer(loaded.recipe, prep, accelerator, model))
    if mode == "live":
        live = Reference(live=lambda tensors: score()(tensors))
        return live, live if prep.evaluation is not None else None
    train = Reference(_cached_table(loaded, prep, accelerator, score, "train"))
    if prep.evaluation is None:
        return train, None
    held = dataclasses.replace(prep, data=prep.evaluation.data)
    return train, Reference(_cached_table(loaded, held, accelerator, score, "eval"))


def _scorer(recipe: Any, prep: Any, accelerator: Any, model: Any) -> Scorer:
    """The starting model's sequence log-probabilities, without gradients."""
    import torch

    objective = prep.objective
    if recipe.lora is not None:
        adapted = accelerator.unwrap_model(model)

        def without_adapter(tensors: dict) -> Any:
            training = adapted.training
            adapted.eval()
            with torch.no_grad(), adapted.disable_adapter(), accelerator.autocast():
                found = objective.sequence_logps(adapted, tensors)
            adapted.train(training)
            return found

        return without_adapter
    frozen = _frozen_copy(recipe, prep, accelerator, model)

    def frozen_copy(tensors: dict) -> Any:
        with torch.no_grad(), accelerator.autocast():
            return objective.sequence_logps(frozen, tensors)

    return frozen_copy


def _frozen_copy(recipe: Any, prep: Any, accelerator: Any, model: Any) -> Any:
    """The starting model, rebuilt as the run built it (the same seed: a randomly initialised model
    comes out the same), in the trained model's dtype, with no gradients; ZeRO-3 (which builds it
    partitioned) runs it as an engine of its own."""
    from accelerate.utils import set_seed

    from framework.launch.accelerator import is_deepspeed
    from framework.model.loading import build_model

    set_seed(recipe.seed)
    frozen = build_model(recipe, prep.tokenizer, attention=prep.attention)
    frozen.requires_grad_(False)
    frozen.eval()
    dtype = next(accelerator.unwrap_model(model).parameters()).dtype
    if is_deepspeed(accelerator) and recipe.launch.deepspeed.zero_stage == 3:
        return _sharded(frozen.to(dtype), accelerator)
    return frozen.to(accelerator.device, dtype)


def _sharded(frozen: Any, accelerator: Any) -> Any:
    """A DeepSpeed ZeRO-3 engine around the frozen model, with the run's own ZeRO settings and no
    optimizer: its weights are partitioned across ranks and gathered layer by layer, as training's are."""
    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    engine, *_ = deepspeed.initialize(model=frozen, config=config)
    engine.eval()
    return engine


def _cached_table(loaded: Any, prep: Any, accelerator: Any, score: Callable[[], Scorer], role: str) -> Any:
    """Every row's reference log-probabilities (rows x sequences), read from the cache or computed.
    `role` (train, eval) keeps a split's two row sets apart in the same cache entry.

    Caches are local to each machine: the table is read only when every process finds it, else every
    process scores (a machine that skipped would leave the others waiting in the scoring's collectives),
    and each machine's first process writes it where it was missing."""
    import torch

    key = _key(loaded.recipe, prep, accelerator, len(prep.data.lengths))
    path = prep.data.cache_path / f"reference-{role}-{key}.pt"
    found = path.exists()
    everywhere = accelerator.reduce(torch.tensor(float(found), device=accelerator.device), "sum")
    if int(everywhere) == accelerator.num_processes:
        say(f"reference log-probabilities ({role}): cached ({path.name})")
        return torch.load(path, weights_only=True)
    table = _score_every_row(prep, accelerator, score(), role)
    if accelerator.is_local_main_process and not found:
        scratch = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(table, scratch)
        scratch.replace(path)  # complete or absent
    accelerator.wait_for_everyone()
    return table


def _score_every_row(prep: Any, accelerator: Any, score: Scorer, role: str) -> Any:
    """Each rank scores its share of the first epoch's micro-batches (the same layout training, or
    evaluation, uses, so the numbers equal live ones); the sum over ranks is the whole table. The ranks
    of a sequence-parallel group score the same micro-batches together; their first writes them."""
    import torch

    from framework.training.steps import collate, to_device

    recipe, device = prep.loaded.recipe, accelerator.device
    row_tokens = prep.data.max_seq_length * prep.objective.sequences_per_row
    rows = recipe.train.per_device_batch_size if role == "train" else \
        recipe.eval.per_device_batch_size or recipe.train.per_device_batch_size
    plan = prep.packing.plan(prep.data.lengths, rows, row_tokens, recipe.seed)
    mine = shard(plan, prep.groups.index, prep.groups.count)
    table = torch.zeros(len(prep.data.lengths), prep.objective.sequences_per_row, dtype=torch.float64, device=device)
    with progress_bar(f"reference log-probabilities ({role})", len(mine), unit="micro-batches") as advance:
        for micro_batch in mine:  # a rank that ran out scores a filler: ZeRO-3 needs every rank's forward
            batch = collate(prep, micro_batch, device)
            at = to_device({"rows": torch.tensor(batch.rows, dtype=torch.long)}, device)["rows"]
            found = score(batch.tensors).double()
            if prep.groups.counts:
                table.index_copy_(0, at, found)
            advance(1)
    return accelerator.reduce(table, "sum").cpu()


def _key(recipe: Any, prep: Any, accelerator: Any, rows: int) -> str:
    """What changes the reference's numbers beyond the rows (the cache entry already keys those):
    the starting model (and its local files), its precision, the attention kernel that computes it and
    the device it runs on, the objective and the layout."""
    savers = ("gradient_checkpointing", "activation_offloading")  # the same numbers either way
    model = {k: v for k, v in asdict(recipe.model).items() if k not in savers}
    local = local_fingerprint(recipe.model.name_or_path) if recipe.model.name_or_path else None
    parts = {"model": model, "files": local, "seed": recipe.seed if recipe.model.config else None,
             "lora": recipe.lora is not None, "precision": recipe.launch.mixed_precision,
             "deepspeed": asdict(recipe.launch.deepspeed) if recipe.launch.deepspeed else None,
             "attention": prep.attention, "device": accelerator.device.type,
             "objective": recipe.objective.name, "batch": recipe.train.per_device_batch_size,
             "packing": asdict(recipe.data.packing), "processes": accelerator.num_processes, "rows": rows,
             "sequence_parallel": recipe.launch.sequence_parallel}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]

