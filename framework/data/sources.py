"""Sources: pick each mixture entry's loader, fingerprint it, map its columns and format its rows.

A formatted source is a `datasets.Dataset` with columns `messages` (chat turns, or empty), `text`
(plain language-modelling text, or None), `source` (index into data.mixture) and `row` (1-based row
number in that source), so that any later error can still name the row it is about.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from framework.config.schema import MixtureEntry
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
        kinds = {LOADER_BY_SUFFIX.get(p.suffix) for p in path.rglob("*") if p.is_file()} - {None}
        return kinds.pop() if len(kinds) == 1 else None
    if path.suffix in LOADER_BY_SUFFIX:  # a data file, present or not (its loader says "no such file")
        return LOADER_BY_SUFFIX[path.suffix]
    if path.exists() or entry.source.startswith((".", "/", "~")):
        return None  # a local file of a kind no loader is picked for
    return "hub"


def local_fingerprint(source: str) -> str | None:
    """A cheap fingerprint of a local file or folder (names, sizes, mtimes); None if not local."""
    path = Path(source)
    if not path.exists():
        return None
    # datasets writes its own cache-*.arrow files next to a saved dataset; they are not the data.
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*"))
                   if p.is_file() and not p.name.startswith("cache-"))
    stats = [(str(p.relative_to(path.parent)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


def loaded_fingerprint(loaded: Any) -> str:
    """Fingerprint of data a loader returned (a hub dataset, or rows from a third-party loader)."""
    fingerprint = getattr(loaded, "_fingerprint", None)
    if fingerprint:
        return str(fingerprint)
    return hashlib.sha256(json.dumps(list(loaded), sort_keys=True, default=str).encode()).hexdigest()


def format_source(loaded: Any, index: int, entry: MixtureEntry, to_messages: Callable,
                  num_workers: int) -> Any:
    """Rows of one source as `messages`/`text`, tagged with their source index and row number.

    Python rows (from JSON) are formatted before they become arrow data, so a wrongly typed or
    missing value is the format's error about that row, never an arrow type-inference failure.
    """
    import datasets

    if not isinstance(loaded, datasets.Dataset):
        rows = list(loaded)
        _check_columns(entry, index, set().union(*(row.keys() for row in rows)) if rows else set())
        batch = _convert(rows, range(len(rows)), index, entry, to_messages)
        return datasets.Dataset.from_dict(batch, features=_features())
    _check_columns(entry, index, set(loaded.column_names))

    def convert(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        return _convert(rows, indices, index, entry, to_messages)

    return loaded.map(convert, batched=True, with_indices=True, remove_columns=loaded.column_names,
                      num_proc=num_workers if num_workers > 1 and len(loaded) > 1000 else None,
                      desc=f"formatting {entry.source}", features=_features())


def _check_columns(entry: MixtureEntry, index: int, columns: set[str]) -> None:
    missing = [actual for actual in entry.columns.values() if actual not in columns]
    if missing:
        raise UserError(f"{entry.source}: data.mixture[{index}].columns names missing column(s) "
                        f"{', '.join(missing)} (columns: {', '.join(sorted(columns))})")


def _convert(rows: list[dict], indices: Any, index: int, entry: MixtureEntry, to_messages: Callable
             ) -> dict[str, list]:
    out: dict[str, list] = {"messages": [], "text": [], "source": [], "row": []}
    for row, position in zip(rows, indices):
        record = {**row, **{wanted: row.get(actual) for wanted, actual in entry.columns.items()}}
        result = _format_row(to_messages, record, entry.source, position + 1)
        out["messages"].append([] if isinstance(result, str) else result)
        out["text"].append(result if isinstance(result, str) else None)
        out["source"].append(index)
        out["row"].append(position + 1)
    return out


def _features():
    from datasets import Features, List, Value

    return Features({"messages": List({"role": Value("string"), "content": Value("string")}),
                     "text": Value("string"), "source": Value("int32"), "row": Value("int64")})


def _format_row(to_messages: Callable, row: dict, source: str, number: int) -> list[dict] | str:
    try:
        return to_messages(row)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UserError(f"{source}: row {number}: {exc}") from None
