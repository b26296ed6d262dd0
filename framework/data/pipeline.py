"""The pipeline: sources -> mixture -> tokens, labels and truncation -> cached arrow rows.

`prepare_data` is everything between a recipe's `data:` section and rows ready for packing. It
is cached under a key of everything that changes its result, so a second run (and every non-main
process of a multi-process run) reads the rows instead of tokenizing again. `untruncated_sample`
encodes a seeded sample of the same rows without any cut, for the max_seq_length sweep.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from framework.config.schema import Recipe
from framework.data.cache import cache_key, cache_root, load_cached, save_cached, tokenizer_fingerprint
from framework.data.mixture import mix
from framework.data.sources import RowNames, format_source, loaded_fingerprint, local_fingerprint
from framework.data.tokenize import Report, encode_rows, make_encoder
from framework.errors import UserError
from framework.model.tokenizer import is_jinja
from framework.types import Piece, Sample


@dataclass
class PreparedData:
    """Tokenized rows (arrow, memory-mapped) and what preprocessing did to them."""

    dataset: Any  # datasets.Dataset with input_ids, labels, length
    report: Report
    mixture_stats: dict[str, Any]
    from_cache: bool
    cache_path: Path
    build_mixture: Callable[[], Any]

    @property
    def max_seq_length(self) -> int:
        """The bound the rows were cut to (the recipe's data.max_seq_length, read once by prepare_data)."""
        return self.report.max_seq_length

    @property
    def lengths(self) -> list[int]:
        return list(self.dataset["length"])

    def take(self, rows: list[list[Piece]]) -> list[list[Sample]]:
        """The samples of a micro-batch's rows, read in one go; slices are cut after reading."""
        wanted = sorted({piece if isinstance(piece, int) else piece[0] for row in rows for piece in row})
        read = self.dataset[wanted]
        found = {i: Sample(ids, labels) for i, ids, labels in zip(wanted, read["input_ids"], read["labels"])}
        return [[found[p] if isinstance(p, int) else Sample(found[p[0]].input_ids[p[1]:p[2]],
                                                            found[p[0]].labels[p[1]:p[2]])
                 for p in row] for row in rows]


def prepare_data(recipe: Recipe, loaders: list[Callable], formats: list[Callable], truncate: Callable,
                 tokenizer: Any, main_first: Any = None) -> PreparedData:
    """Load, mix, tokenize and truncate the recipe's data, or read it from the cache.

    `loaders[i]`/`formats[i]` are the bound plugins of data.mixture[i]; `main_first` (a context
    manager) lets the main process fill the cache before the other processes read it.
    """
    max_seq_length = recipe.data.max_seq_length
    with main_first or contextlib.nullcontext(), _quiet_datasets():
        fingerprints, loaded = _fingerprints(recipe, loaders)
        path = cache_root(recipe.data.cache_dir) / _key(recipe, fingerprints, tokenizer, max_seq_length)
        build = functools.partial(_build_mixture, recipe, loaders, formats, loaded)
        cached = load_cached(path)
        if cached is not None:
            dataset, meta = cached
            prepared = PreparedData(dataset, Report(**meta["report"]), meta["mixture"], True,
                                    path, lambda: build()[0])
        else:
            mixture, stats, names = build()
            encode = make_encoder(tokenizer, truncate, max_seq_length, recipe.data.train_on, names,
                                  template_name(recipe), recipe.data.untrainable)
            dataset, report = _tokenize(mixture, encode, recipe.data.num_workers, max_seq_length)
            dataset = save_cached(path, dataset, {"report": vars(report), "mixture": stats})
            prepared = PreparedData(dataset, report, stats, False, path, lambda: mixture)
    if len(prepared.dataset) == 0:
        raise UserError(f"data: no row is left to train on: {prepared.report.summary()}; "
                        f"{_remedy(prepared.report)}")
    return prepared


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
                       count: int) -> list[Sample]:
    """Up to `count` rows of the recipe's mixture (a seeded sample), encoded whole: no cut, no cache."""
    import random

    with _quiet_datasets():
        mixture, _, names = _build_mixture(recipe, loaders, formats, _fingerprints(recipe, loaders)[1])
    indices = sorted(random.Random(recipe.seed).sample(range(len(mixture)), min(count, len(mixture))))
    rows = mixture.select(indices).to_dict()

    def where(i: int) -> str:
        return names[rows["source"][i]](rows["file"][i], rows["row"][i])

    samples = encode_rows(tokenizer, rows["messages"], rows["text"], recipe.data.train_on, where,
                          template_name(recipe))
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


def _build_mixture(recipe: Recipe, loaders: list[Callable], formats: list[Callable],
                   loaded: dict[int, Any]) -> tuple[Any, dict, list[RowNames]]:
    """The mixture, its stats, and what names each source's rows in an error."""
    data, formatted, names = recipe.data, [], []
    with progress_bars():
        for i, (entry, load, to_messages) in enumerate(zip(data.mixture, loaders, formats)):
            rows = loaded.pop(i) if i in loaded else load(entry.source, entry.split)
            dataset, named = format_source(rows, i, entry, to_messages, data.num_workers)
            formatted.append(dataset)
            names.append(named)
    mixture, sources = mix(formatted, data, recipe.seed)
    return mixture, {"rows": len(mixture), "seed": recipe.seed, "sources": sources}, names


@contextlib.contextmanager
def _quiet_datasets():
    """Only the long steps (formatting, tokenizing) show datasets' progress bars."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


@contextlib.contextmanager
def progress_bars():
    from datasets.utils import logging as ds_logging

    ds_logging.enable_progress_bar()
    try:
        yield
    finally:
        ds_logging.disable_progress_bar()


def _tokenize(mixture: Any, encode: Callable, num_workers: int, max_seq_length: int) -> tuple[Any, Report]:
    with progress_bars():
        tokenized = mixture.map(encode, batched=True, remove_columns=mixture.column_names,
                                num_proc=num_workers if num_workers > 1 else None,
                                desc=f"tokenizing (max_seq_length {max_seq_length:,})")
    stats = tokenized.select_columns(["length", "length_before", "trainable", "trainable_before", "dropped"])
    report = Report.from_columns(stats.to_dict(), max_seq_length)
    kept = tokenized.filter(lambda codes: [code == 0 for code in codes], input_columns="dropped",
                            batched=True, desc="dropping rows with nothing to train")
    return kept.select_columns(["input_ids", "labels", "length"]), report


def _key(recipe: Recipe, fingerprints: list[str], tokenizer: Any, max_seq_length: int) -> str:
    data = recipe.data
    sources = [{"source": e.source, "loader": e.loader, "split": e.split, "format": e.format,
                "columns": e.columns, "fraction": e.fraction, "count": e.count, "fingerprint": fp}
               for e, fp in zip(data.mixture, fingerprints)]
    return cache_key({"sources": sources, "seed": recipe.seed, "tokenizer": tokenizer_fingerprint(tokenizer),
                      "max_seq_length": max_seq_length, "truncation": vars(data.truncation),
                      "train_on": data.train_on, "untrainable": data.untrainable})
