"""Sources: pick each mixture entry's loader, fingerprint it, map its columns and format its rows.

A formatted source is a `datasets.Dataset` with columns `messages` (chat turns, or empty), `text`
(plain language-modelling text, or None), `source` (index into data.mixture), `file` and `row`:
where the row came from, so that any later error can still name it. When the loader said where
each row came from (`framework.Rows`), `file` indexes its files and `row` is the row's line in that
file (1-based, blank lines counted); otherwise `file` is 0 and `row` the 1-based row number in the
source. `RowNames` turns the three back into `file:line` (or `source: row N`).
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from framework.config.schema import MixtureEntry
from framework.errors import UserError
from framework.types import Rows

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


@dataclass(frozen=True)
class RowNames:
    """Names a row of one source from its `file` and `row` columns, as errors show it."""

    source: str
    files: tuple[tuple[str, bool], ...] = ()  # a `Rows`' files: (name, whether numbers are lines)

    def __call__(self, file: int, number: int) -> str:
        if not self.files:
            return f"{self.source}: row {number}"
        name, lines = self.files[file]
        return f"{name}:{number}" if lines else f"{name}: row {number}"


def format_source(loaded: Any, index: int, entry: MixtureEntry, to_messages: Callable,
                  num_workers: int) -> tuple[Any, RowNames]:
    """Rows of one source as `messages`/`text`, tagged with where they came from, and the names
    of those places.

    Python rows (from JSON) are formatted before they become arrow data, so a wrongly typed or
    missing value is the format's error about that row, never an arrow type-inference failure.
    """
    import datasets

    if not isinstance(loaded, datasets.Dataset):
        rows, names = _nonempty(list(loaded), entry), _names(loaded, entry.source)
        files, numbers = ((loaded.file_of, loaded.numbers) if names.files
                          else (itertools.repeat(0), range(1, len(rows) + 1)))
        _check_columns(entry, index, set().union(*(row.keys() for row in rows)))
        return _to_arrow(_convert(rows, files, numbers, index, entry, to_messages, names), names), names
    _check_columns(entry, index, set(_nonempty(loaded, entry).column_names))
    names = RowNames(entry.source)

    def convert(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        return _convert(rows, itertools.repeat(0), [i + 1 for i in indices], index, entry, to_messages, names)

    formatted = loaded.map(convert, batched=True, with_indices=True, remove_columns=loaded.column_names,
                           num_proc=num_workers if num_workers > 1 and len(loaded) > 1000 else None,
                           desc=f"formatting {entry.source}", features=_features())
    return formatted, names


def _to_arrow(batch: dict[str, list], names: RowNames) -> Any:
    """The formatted rows as a Dataset; a lone UTF-16 surrogate (which a loader's Python strings may
    hold, though arrow cannot) is an error naming its row."""
    import datasets

    try:
        return datasets.Dataset.from_dict(batch, features=_features())
    except UnicodeEncodeError:
        for i, (messages, text) in enumerate(zip(batch["messages"], batch["text"])):
            try:
                json.dumps([messages, text], ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise UserError(f"{names(batch['file'][i], batch['row'][i])}: holds \\u"
                                f"{ord(exc.object[exc.start]):04x}, half of a UTF-16 surrogate pair, not a "
                                "character; fix or remove it") from None
        raise


def _nonempty(rows: Any, entry: MixtureEntry) -> Any:
    if len(rows) == 0:
        raise UserError(f"{entry.source}: the source holds no rows; give it rows or remove it from data.mixture")
    return rows


def _names(loaded: Any, source: str) -> RowNames:
    if not isinstance(loaded, Rows):
        return RowNames(source)
    if not len(loaded) == len(loaded.file_of) == len(loaded.numbers):
        raise UserError(f"{source}: the loader returned {len(loaded):,} rows but {len(loaded.numbers):,} "
                        "locations; build its Rows with add_file")
    return RowNames(source, tuple(loaded.files))


def _check_columns(entry: MixtureEntry, index: int, columns: set[str]) -> None:
    missing = [actual for actual in entry.columns.values() if actual not in columns]
    if missing:
        raise UserError(f"{entry.source}: data.mixture[{index}].columns names missing column(s) "
                        f"{', '.join(missing)} (columns: {', '.join(sorted(columns))})")


def _convert(rows: list[dict], files: Any, numbers: Sequence[int], index: int, entry: MixtureEntry,
             to_messages: Callable, names: RowNames) -> dict[str, list]:
    out: dict[str, list] = {"messages": [], "text": [], "source": [], "file": [], "row": []}
    for row, file, number in zip(rows, files, numbers):
        record = {**row, **{wanted: row.get(actual) for wanted, actual in entry.columns.items()}}
        try:
            result = to_messages(record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise UserError(f"{names(file, number)}: {exc}") from None
        out["messages"].append([] if isinstance(result, str) else result)
        out["text"].append(result if isinstance(result, str) else None)
        out["source"].append(index)
        out["file"].append(file)
        out["row"].append(number)
    return out


def _features():
    from datasets import Features, List, Value

    return Features({"messages": List({"role": Value("string"), "content": Value("string")}),
                     "text": Value("string"), "source": Value("int32"), "file": Value("int32"),
                     "row": Value("int64")})
