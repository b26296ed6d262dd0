"""The data pipeline driver: mixture -> chat messages -> tokens and labels -> truncated rows."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from framework.chat import TemplateError, encode_chat
from framework.config.schema import DataConfig, MixtureEntry
from framework.errors import UserError
from framework.types import Sample

LOADER_BY_SUFFIX = {".json": "json", ".jsonl": "json"}


@dataclass
class Report:
    """What max_seq_length and truncation did to the data."""

    rows_in: int = 0
    rows_kept: int = 0
    rows_truncated: int = 0
    rows_dropped: int = 0
    tokens_lost: int = 0
    trainable_tokens_lost: int = 0
    lengths: list[int] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in vars(self).items() if k != "lengths"}
        d["tokens_kept"] = sum(self.lengths)
        return d


def pick_loader(entry: MixtureEntry) -> str | None:
    """The loader a mixture entry names, the one its file suffix implies, else the hub loader."""
    if entry.loader != "auto":
        return entry.loader
    suffix = Path(entry.source).suffix
    if Path(entry.source).is_file() and suffix not in LOADER_BY_SUFFIX:
        return None
    return LOADER_BY_SUFFIX.get(suffix, "hub")


def sample_rows(rows: list[Any], entry: MixtureEntry, seed: int) -> list[Any]:
    """Whole copies plus a seeded sample of the remainder, for a fraction or a count."""
    want = entry.count if entry.count is not None else round(entry.fraction * len(rows))
    copies, remainder = divmod(want, len(rows)) if rows else (0, 0)
    return rows * copies + random.Random(seed).sample(rows, remainder)


def load_mixture(data: DataConfig, loaders: list[Callable], formats: list[Callable],
                 seed: int) -> list[list[dict]]:
    """Every source's rows as chat messages, sampled by fraction/count and shuffled with the seed.

    `loaders[i]` and `formats[i]` are the bound plugins for `data.mixture[i]`.
    """
    mixed = []
    for i, (entry, load, to_messages) in enumerate(zip(data.mixture, loaders, formats)):
        conversations = [_format_row(to_messages, row, entry.source, n)
                         for n, row in enumerate(load(entry.source, entry.split), start=1)]
        mixed.extend(sample_rows(conversations, entry, seed + i))
    if not mixed:
        raise UserError("data.mixture: the mixture has no rows; check the sources and their fractions")
    random.Random(seed).shuffle(mixed)
    return mixed


def _format_row(to_messages: Callable, row: Any, source: str, number: int) -> list[dict]:
    try:
        return to_messages(row)
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"{source}: row {number}: {exc}") from None


def write_mix(mix_dir: Path, mixed: list[list[dict]], report: Report) -> None:
    """The mixed, untokenized rows (what was trained on, in order) and the truncation report."""
    mix_dir.mkdir(parents=True, exist_ok=True)
    with (mix_dir / "mixture.jsonl").open("w", encoding="utf-8") as out:
        for messages in mixed:
            out.write(json.dumps({"messages": messages}) + "\n")
    (mix_dir / "mixture_stats.json").write_text(json.dumps(report.as_dict(), indent=2))


def tokenize(conversations: list[list[dict]], tokenizer: Any, max_len: int,
             truncate: Callable, num_workers: int) -> tuple[list[Sample], Report]:
    """Encode, truncate and drop rows left with nothing to train; report what was lost."""
    from datasets import Dataset

    def encode(batch: dict[str, list]) -> dict[str, list]:
        samples = [encode_chat(tokenizer, messages) for messages in batch["messages"]]
        return {"input_ids": [s.input_ids for s in samples], "labels": [s.labels for s in samples]}

    dataset = Dataset.from_dict({"messages": conversations})
    try:
        encoded = dataset.map(encode, batched=True, remove_columns=["messages"],
                              num_proc=num_workers if num_workers > 1 else None, desc="tokenizing")
    except TemplateError as exc:
        raise UserError(f"tokenizer.chat_template: {exc}")
    report, samples = Report(rows_in=len(encoded)), []
    for input_ids, labels in zip(encoded["input_ids"], encoded["labels"]):
        _account(Sample(input_ids, labels), truncate, max_len, report, samples)
    return samples, report


def _account(sample: Sample, truncate: Callable, max_len: int, report: Report, out: list[Sample]) -> None:
    cut = truncate(sample.input_ids, sample.labels, max_len) if len(sample.input_ids) > max_len else (
        sample.input_ids, sample.labels)
    kept = Sample(*cut) if cut is not None else Sample([], [])
    if kept.num_trainable == 0:  # nothing left to learn from: the whole row is lost
        kept = Sample([], [])
        report.rows_dropped += 1
    report.tokens_lost += len(sample.input_ids) - len(kept.input_ids)
    report.trainable_tokens_lost += sample.num_trainable - kept.num_trainable
    if not kept.input_ids:
        return
    report.rows_truncated += len(kept.input_ids) < len(sample.input_ids)
    report.rows_kept += 1
    report.lengths.append(len(kept.input_ids))
    out.append(kept)
