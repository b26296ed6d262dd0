"""Sources and mixtures: load each source, map its columns, format rows, sample and shuffle.

The mixture is a `datasets.Dataset` with columns `messages` (chat turns, or empty), `text` (plain
language-modelling text, or None), `source` (index into data.mixture) and `row` (1-based row
number in that source), so that any later error can still name the row it is about.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Callable

from framework.config.schema import DataConfig, MixtureEntry
from framework.errors import UserError

LOADER_BY_SUFFIX = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def pick_loader(entry: MixtureEntry) -> str | None:
    """The loader a mixture entry names, or the one its path implies; a non-path is a hub name."""
    if entry.loader != "auto":
        return entry.loader
    path = Path(entry.source)
    if path.is_dir():
        if any((path / marker).is_file() for marker in DISK_MARKERS):
            return "disk"
        suffixes = {LOADER_BY_SUFFIX.get(p.suffix) for p in path.iterdir() if p.is_file()}
        suffixes.discard(None)
        return suffixes.pop() if len(suffixes) == 1 else None
    if path.is_file():
        return LOADER_BY_SUFFIX.get(path.suffix)
    return "hub"


def local_fingerprint(source: str) -> str | None:
    """A cheap fingerprint of a local file or folder (names, sizes, mtimes); None if not local."""
    path = Path(source)
    if not path.exists():
        return None
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
    stats = [(str(p.relative_to(path.parent)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


def loaded_fingerprint(loaded: Any) -> str:
    """Fingerprint of data a loader returned (a hub dataset, or rows from a third-party loader)."""
    fingerprint = getattr(loaded, "_fingerprint", None)
    if fingerprint:
        return str(fingerprint)
    return hashlib.sha256(json.dumps(list(loaded), sort_keys=True, default=str).encode()).hexdigest()


def as_dataset(loaded: Any) -> Any:
    import datasets

    if isinstance(loaded, datasets.Dataset):
        return loaded
    rows = list(loaded)
    return datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({})


def sample_indices(size: int, entry: MixtureEntry, seed: int) -> list[int]:
    """Whole copies plus a seeded sample of the remainder, for a fraction or a count."""
    want = entry.count if entry.count is not None else round(entry.fraction * size)
    copies, remainder = divmod(want, size) if size else (0, 0)
    return list(range(size)) * copies + sorted(random.Random(seed).sample(range(size), remainder))


def format_source(dataset: Any, index: int, entry: MixtureEntry, to_messages: Callable,
                  num_workers: int) -> Any:
    """Rows of one source as `messages`/`text`, tagged with their source index and row number."""
    missing = [actual for actual in entry.columns.values() if actual not in dataset.column_names]
    if missing:
        raise UserError(f"{entry.source}: data.mixture[{index}].columns names missing column(s) "
                        f"{', '.join(missing)} (columns: {', '.join(dataset.column_names)})")
    renamed = {actual: wanted for wanted, actual in entry.columns.items() if actual != wanted}

    def convert(batch: dict[str, list], rows: list[int]) -> dict[str, list]:
        out: dict[str, list] = {"messages": [], "text": [], "source": [], "row": []}
        for n, row in enumerate(rows):
            record = {renamed.get(k, k): values[n] for k, values in batch.items()}
            result = _format_row(to_messages, record, entry.source, row + 1)
            out["messages"].append([] if isinstance(result, str) else result)
            out["text"].append(result if isinstance(result, str) else None)
            out["source"].append(index)
            out["row"].append(row + 1)
        return out

    return dataset.map(convert, batched=True, with_indices=True, remove_columns=dataset.column_names,
                       num_proc=num_workers if num_workers > 1 and len(dataset) > 1000 else None,
                       desc=f"formatting {entry.source}", features=_features())


def _features():
    from datasets import Features, List, Value

    return Features({"messages": List({"role": Value("string"), "content": Value("string")}),
                     "text": Value("string"), "source": Value("int32"), "row": Value("int64")})


def _format_row(to_messages: Callable, row: dict, source: str, number: int) -> list[dict] | str:
    try:
        return to_messages(row)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UserError(f"{source}: row {number}: {exc}") from None


def mix(formatted: list[Any], data: DataConfig, seed: int) -> tuple[Any, list[dict]]:
    """Sample each formatted source by its fraction/count, concatenate and shuffle with the seed."""
    from datasets import concatenate_datasets

    picked, stats = [], []
    for i, (dataset, entry) in enumerate(zip(formatted, data.mixture)):
        indices = sample_indices(len(dataset), entry, seed + i)
        picked.append(dataset.select(indices))
        stats.append({"source": entry.source, "rows_available": len(dataset), "rows_used": len(indices),
                      "fraction": entry.fraction, "count": entry.count})
    mixture = concatenate_datasets(picked)
    if len(mixture) == 0:
        raise UserError("data.mixture: the mixture has no rows; check the sources and their fractions")
    return mixture.shuffle(seed=seed).flatten_indices(), stats


def write_mix(mix_dir: Path, mixture: Any, stats: dict[str, Any]) -> None:
    """The mixed, untokenized rows in training order (JSONL), and the mixture's stats."""
    mix_dir.mkdir(parents=True, exist_ok=True)
    with (mix_dir / "mixture.jsonl").open("w", encoding="utf-8") as out:
        for row in mixture:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    (mix_dir / "mixture_stats.json").write_text(json.dumps(stats, indent=2))
