"""The pipeline: sources -> mixture plan -> one pass (format, tokens, labels, truncation) -> cache.

`prepare_data` is everything between a recipe's `data:` section and rows ready for packing. Each
source stays arrow (memory-mapped) and the mixture is a plan of indices, so the only pass over the
rows is the tokenizing one, in data.num_workers processes, writing straight into the cache. It reads
each distinct row once, in source order (front to back through each file, however shuffled or
repeated the mixture is); the mixture order is an index array into what it wrote. The
cache is keyed by everything that changes its result, so a second run (and every non-main process of
a multi-process run) reads the rows instead of tokenizing again. `untruncated_sample` encodes a
seeded sample of the same rows without any cut, for the max_seq_length sweep.
"""
from __future__ import annotations

import contextlib
import functools
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from framework.config.schema import Recipe
from framework.data.cache import (cache_key, cache_root, finish_entry, load_cached, open_shards, start_entry,
                                  tokenizer_fingerprint)
from framework.data.mixture import MixturePlan, finish_mix, mix_written, plan_mixture
from framework.data.passes import RELEASE_EVERY, Reader, run, write_arrow_part, write_jsonl_part
from framework.data.sources import loaded_fingerprint, local_fingerprint, make_source
from framework.data.tokenize import Report, encode_rows, make_encoder
from framework.errors import UserError
from framework.model.tokenizer import is_jinja
from framework.types import Piece, Sample


@dataclass
class PreparedData:
    """Tokenized rows (arrow, memory-mapped, in mixture order) and what preprocessing did to them."""

    dataset: Any  # datasets.Dataset: input_ids, labels, length, and the accounting columns
    lengths: list[int]  # each row's length, for the batch plan
    report: Report
    mixture_stats: dict[str, Any]
    from_cache: bool
    cache_path: Path
    plan: MixturePlan
    reader: Callable[[], Reader]  # loads the sources again, to read the untokenized rows
    seconds: dict[str, float] = field(default_factory=dict)  # what each stage took when the entry was built

    @property
    def max_seq_length(self) -> int:
        """The bound the rows were cut to (the recipe's data.max_seq_length, read once by prepare_data)."""
        return self.report.max_seq_length

    def take(self, rows: list[list[Piece]]) -> list[list[Sample]]:
        """The samples of a micro-batch's rows, read in one go; slices are cut after reading."""
        wanted = sorted({piece if isinstance(piece, int) else piece[0] for row in rows for piece in row})
        read = self.dataset.select_columns(["input_ids", "labels", "sequences"])[wanted]
        found = {i: Sample(ids, labels, tuple(seqs))
                 for i, ids, labels, seqs in zip(wanted, read["input_ids"], read["labels"], read["sequences"])}
        return [[found[p] if isinstance(p, int) else Sample(found[p[0]].input_ids[p[1]:p[2]],
                                                            found[p[0]].labels[p[1]:p[2]])
                 for p in row] for row in rows]

    def write_mix(self, mix_dir: Path, workers: int) -> None:
        """The mixed, untokenized rows in training order and their stats, written once per cache entry."""
        if mix_written(mix_dir, self.cache_path.name):
            return
        reader = self.reader()
        with tempfile.TemporaryDirectory(dir=mix_dir.parent if mix_dir.parent.exists() else None) as folder:
            parts = run(f"writing {mix_dir}", reader, workers, write_jsonl_part(reader, Path(folder)))
            finish_mix(mix_dir, parts, self.mixture_stats, self.cache_path.name)


def prepare_data(recipe: Recipe, loaders: list[Callable], formats: list[Callable], truncate: Callable,
                 tokenizer: Any, main_first: Any = None, objective: Any = None) -> PreparedData:
    """Load, mix, tokenize and truncate the recipe's data, or read it from the cache.

    `loaders[i]`/`formats[i]` are the bound plugins of data.mixture[i]; `main_first` (a context
    manager) lets the main process fill the cache before the other processes read it; `objective`
    (the recipe's, built) encodes the rows (None: the chat encoder of sft).
    """
    max_seq_length = recipe.data.max_seq_length
    with main_first or contextlib.nullcontext(), _quiet_datasets():
        fingerprints, loaded = _fingerprints(recipe, loaders)
        path = cache_root(recipe.data.cache_dir) / _key(recipe, fingerprints, tokenizer, max_seq_length, objective)
        reader = functools.partial(_reader, recipe, loaders, formats, loaded)
        cached = load_cached(path)
        from_cache = cached is not None
        if not from_cache:
            settings = (tokenizer, truncate, max_seq_length, train_on_for(recipe, objective), template_name(recipe),
                        recipe.data.untrainable)
            encode = objective.encoder(*settings) if objective is not None else make_encoder(*settings)
            _build(path, reader, encode, recipe, max_seq_length)
            cached = load_cached(path)
        dataset, lengths, plan, meta = cached
    prepared = PreparedData(dataset, lengths, Report(**meta["report"]), meta["mixture"], from_cache, path, plan,
                            reader, meta.get("seconds", {}))
    if len(prepared.dataset) == 0:
        raise UserError(f"data: no row is left to train on: {prepared.report.summary()}; "
                        f"{_remedy(prepared.report)}")
    return prepared


def _build(path: Path, reader: Callable[[], Reader], encode: Callable, recipe: Recipe, max_seq_length: int) -> None:
    """Read the sources, tokenize each distinct row of the mixture once into a new cache entry, and
    record what it did, counting each row as often as the mixture holds it."""
    import numpy as np

    started = time.perf_counter()
    mixture = reader()
    distinct, where = mixture.plan.distinct()
    each_once = Reader(distinct, mixture.sources, RELEASE_EVERY["source order"])
    read = time.perf_counter()
    partial = start_entry(path)
    run(f"tokenizing (max_seq_length {max_seq_length:,})", each_once, recipe.data.num_workers,
        write_arrow_part(each_once, encode, partial))
    rows = open_shards(partial)
    columns = {name: rows.column(name).to_numpy()[where] for name in
               ("length", "length_before", "trainable", "trainable_before", "dropped")}
    report = Report.from_columns(columns, max_seq_length)
    stats = {"rows": len(mixture.plan), "seed": recipe.seed, "sources": mixture.plan.stats}
    timings = {"read": round(read - started, 2), "tokenize": round(time.perf_counter() - read, 2)}
    kept = np.flatnonzero(columns["dropped"] == 0)
    finish_entry(partial, path, mixture.plan, where[kept], columns["length"][kept],
                 {"report": vars(report), "mixture": stats, "seconds": timings})


def template_name(recipe: Recipe) -> str:
    """The chat template as the recipe names it, for an error about a row it fails for."""
    value = recipe.tokenizer.chat_template
    if value is None:
        return "the tokenizer's own chat template"
    return "the chat template in tokenizer.chat_template" if is_jinja(value) else f"chat template '{value}'"


def _remedy(report: Report) -> str:
    remedies = {"cut_by_truncation": "raise data.max_seq_length or choose another data.truncation",
                "no_assistant_turn": "give the rows an assistant turn, or set data.train_on: all",
                "empty": "give the rows messages or text",
                "no_trainable_token": "check that the chat template renders the assistant turns"}
    return "; ".join(fix for cause, fix in remedies.items() if report.dropped.get(cause))


def untruncated_sample(recipe: Recipe, loaders: list[Callable], formats: list[Callable], tokenizer: Any,
                       count: int, objective: Any = None) -> list[Sample]:
    """Up to `count` rows of the recipe's mixture (a seeded sample), encoded whole: no cut, no cache. A
    preference pair is its longer side, the one max_seq_length bounds; `objective` (the recipe's,
    built) says what data.train_on: auto trains."""
    import random

    with _quiet_datasets():
        reader = _reader(recipe, loaders, formats, _fingerprints(recipe, loaders)[1])
    total = len(reader.plan)
    picked = sorted(random.Random(recipe.seed).sample(range(total), min(count, total)))
    sample = Reader(MixturePlan(reader.plan.source[picked], reader.plan.index[picked], []), reader.sources)
    samples = []
    for rows, where, _, _ in sample.batches(0, len(picked)):
        train_on, template = train_on_for(recipe, objective), template_name(recipe)
        encoded = encode_rows(tokenizer, [m for m, _, _ in rows], [t for _, t, _ in rows], train_on, where, template)
        pairs = [k for k, (_, _, rejected) in enumerate(rows) if rejected is not None]
        others = encode_rows(tokenizer, [rows[k][2] for k in pairs], [None] * len(pairs), train_on,
                             lambda j: where(pairs[j]), template)
        for k, other in zip(pairs, others):
            encoded[k] = max(encoded[k], other, key=lambda side: len(side.input_ids))
        samples += encoded
    return [s for s in samples if s.num_trainable]  # untrainable rows: dropped, as prepare_data drops them


def _fingerprints(recipe: Recipe, loaders: list[Callable]) -> tuple[list[str], dict[int, Any]]:
    """Each source's fingerprint: from the file system when local, else by loading it (the hub
    dataset then comes from the local Hugging Face cache); what was loaded is kept for reuse."""
    fingerprints, loaded = [], {}
    for i, (entry, load) in enumerate(zip(recipe.data.mixture, loaders)):
        fingerprint = local_fingerprint(entry.source)
        if fingerprint is None:
            loaded[i] = load(entry.source, entry.split)
            fingerprint = loaded_fingerprint(loaded[i])
        fingerprints.append(fingerprint)
    return fingerprints, loaded


def _reader(recipe: Recipe, loaders: list[Callable], formats: list[Callable], loaded: dict[int, Any]) -> Reader:
    """Every source loaded (arrow stays arrow) and the mixture planned over them."""
    sources = []
    for i, (entry, load, to_messages) in enumerate(zip(recipe.data.mixture, loaders, formats)):
        rows = loaded.pop(i) if i in loaded else load(entry.source, entry.split)
        sources.append(make_source(rows, i, entry, to_messages))
    plan = plan_mixture([len(source) for source in sources], recipe.data.mixture, recipe.seed)
    return Reader(plan, sources)


@contextlib.contextmanager
def _quiet_datasets():
    """datasets' own tqdm bars would interleave with seqtune's progress: off while preparing."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def train_on_for(recipe: Recipe, objective: Any) -> str:
    """data.train_on, with auto resolved to what the objective trains (`Objective.train_on`; sft's when
    there is none: every assistant turn)."""
    own = recipe.data.train_on
    return getattr(objective, "train_on", "assistant") if own == "auto" else own


def _key(recipe: Recipe, fingerprints: list[str], tokenizer: Any, max_seq_length: int, objective: Any) -> str:
    data = recipe.data
    sources = [{"source": e.source, "loader": e.loader, "split": e.split, "format": e.format,
                "columns": e.columns, "fraction": e.fraction, "count": e.count, "fingerprint": fp}
               for e, fp in zip(data.mixture, fingerprints)]
    return cache_key({"sources": sources, "seed": recipe.seed, "tokenizer": tokenizer_fingerprint(tokenizer),
                      "max_seq_length": max_seq_length, "truncation": vars(data.truncation),
                      "train_on": train_on_for(recipe, objective), "untrainable": data.untrainable, "objective": recipe.objective.name})
