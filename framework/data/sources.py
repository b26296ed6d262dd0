"""Sources: pick each mixture entry's loader, fingerprint it, and format its rows on demand.

A `Source` is one entry's rows as its loader gave them, kept as arrow (a `datasets.Dataset` or a
`SourceTable` stays memory-mapped, whatever its size) and turned into chat messages or text only
when a pass reads them, batch by batch. Python rows (a list, or a `framework.Rows`) are formatted
when loaded instead, so a wrongly typed value is the format's error about that row, never an arrow
type-inference failure. Every row keeps a name for errors: `file:line`, `file: row N`, or
`source: row N`.

The same checks run on a source's first row alone, as its loader reads it cheaply
(`check_first_row`), so `seqtune check` finds a missing column or a malformed first row with the
message training would stop with, without reading any source whole.
"""
from __future__ import annotations

import hashlib
import json
import re
from array import array
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from framework.config.paths import looks_local
from framework.config.schema import MixtureEntry
from framework.data.progress import progress_bar
from framework.errors import UserError
from framework.types import Pair, Prompt, Rows, SourceTable

LOADER_BY_SUFFIX = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
# A file extension: letters only, so that a hub name's version (`teknium/OpenHermes-2.5`) is not one
EXTENSION = re.compile(r"\.[A-Za-z]{1,10}$")
FORMAT_ERRORS = (ValueError, TypeError, KeyError, AttributeError)  # a format's way of refusing a row
# (messages, text, rejected): text None for a chat; for a preference pair, messages is the chosen
# conversation and rejected the other (None for any other row); for a prompt (online RL), messages
# is the prompt and text its reference answer (None without one)
Formatted = tuple[list[dict], Optional[str], Optional[list[dict]]]


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
    if path.exists() or looks_like_a_path(entry.source):
        return None  # a local file of a kind no loader is picked for, or a path that is not there
    return "hub"


def looks_like_a_path(source: str) -> bool:
    """A local path by its shape: more than a hub id's `org/name`, a trailing separator, or a file
    extension (`mydata/qa.cvs` is a misspelt file, never a hub dataset to wait for)."""
    return looks_local(source) or source.endswith(("/", "\\")) or EXTENSION.search(source) is not None


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
    loaded = loaded.dataset if isinstance(loaded, SourceTable) else loaded
    fingerprint = getattr(loaded, "_fingerprint", None)
    if fingerprint:
        return str(fingerprint)
    return hashlib.sha256(json.dumps(list(loaded), sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class RowNames:
    """Names row i (0-based) of one source as errors show it. `files` are (name, kind) with kind
    `line` (numbers are physical lines), `nonblank` (row k of a file is its k-th non-blank line:
    counted when an error needs it) or `row`; `file_of`/`numbers` place each row when the loader
    said, else `starts` (each file's first row) does."""

    source: str
    files: tuple[tuple[str, str], ...] = ()
    starts: tuple[int, ...] = ()
    file_of: array = field(default_factory=lambda: array("i"))
    numbers: array = field(default_factory=lambda: array("q"))

    def __call__(self, i: int) -> str:
        if not self.files:
            return f"{self.source}: row {i + 1}"
        if self.file_of:
            file, number = self.file_of[i], self.numbers[i]
        else:
            file = bisect_right(self.starts, i) - 1
            number = i - self.starts[file] + 1
        name, kind = self.files[file]
        if kind == "nonblank":
            return f"{name}:{_nonblank_line(name, number)}"
        return f"{name}:{number}" if kind == "line" else f"{name}: row {number}"


def _nonblank_line(path: str, k: int) -> int:
    """The physical line (1-based) of the k-th non-blank line of a file."""
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, start=1):
            k -= bool(line.strip())
            if k == 0:
                return number
    return number


@dataclass
class Source:
    """One mixture entry's rows, formatted batch by batch when a pass reads them."""

    index: int
    entry: MixtureEntry
    dataset: Any  # a datasets.Dataset: the loader's columns, or `messages`/`text` when `to_messages` is None
    to_messages: Optional[Callable]
    names: RowNames

    def __len__(self) -> int:
        return len(self.dataset)

    def release(self) -> None:
        """Let go of the pages read so far. An arrow source is memory-mapped, and every page a pass
        touches stays in this process's resident memory until the mapping closes: reopening the
        same files keeps that bounded by what was read since, however large the source."""
        files = [entry["filename"] for entry in getattr(self.dataset, "cache_files", None) or []]
        if not files or getattr(self.dataset, "_indices", True) is not None:
            return  # in memory, or a selection/shuffle of its files: reopening them would change the rows
        import datasets

        reopened = datasets.concatenate_datasets([datasets.Dataset.from_file(name) for name in files])
        if len(reopened) == len(self.dataset) and reopened.features == self.dataset.features:
            self.dataset = reopened

    def formatted(self, indices: Sequence[int]) -> list[Formatted]:
        """(messages, text, rejected) of the rows at `indices` (0-based), in that order."""
        order = sorted(set(indices))
        contiguous = order[-1] - order[0] + 1 == len(order)  # a pass in source order reads slices
        read = self.dataset[order[0]:order[-1] + 1] if contiguous else self.dataset[order]
        columns = list(read)
        at = {i: {c: read[c][k] for c in columns} for k, i in enumerate(order)}
        if self.to_messages is None:
            return [(at[i]["messages"], at[i]["text"], at[i]["rejected"]) for i in indices]
        return [self._format(at[i], i) for i in indices]

    def _format(self, row: dict, i: int) -> Formatted:
        record = {**row, **{wanted: row.get(actual) for wanted, actual in self.entry.columns.items()}}
        try:
            result = self.to_messages(record)
        except FORMAT_ERRORS as exc:
            raise UserError(f"{self.names(i)}: {exc}") from None
        if isinstance(result, Pair):
            return result.chosen, None, result.rejected
        if isinstance(result, Prompt):  # its answer rides in the text column: see tokenize.is_prompt_row
            return result.messages, result.answer, None
        return ([], result, None) if isinstance(result, str) else (result, None, None)


def make_source(loaded: Any, index: int, entry: MixtureEntry, to_messages: Callable, key: str | None = None
                ) -> Source:
    """A Source from what the entry's loader returned: a Dataset or SourceTable stays arrow, to be
    formatted when read; Python rows are formatted now. `key` names the entry in errors (default
    `data.mixture[index]`)."""
    import datasets

    key = key or f"data.mixture[{index}]"

    if isinstance(loaded, SourceTable):
        starts = tuple(accumulate((count for _, count in loaded.files[:-1]), initial=0))
        kind = "nonblank" if loaded.lines else "row"
        names = RowNames(entry.source, tuple((name, kind) for name, _ in loaded.files), starts)
        loaded = loaded.dataset
    elif isinstance(loaded, datasets.Dataset):
        names = RowNames(entry.source)
    else:
        return _python_source(loaded, index, entry, to_messages, key)
    _check_columns(entry, key, set(_nonempty(loaded, entry).column_names), to_messages)
    return Source(index, entry, loaded, to_messages, names)


def check_first_row(first: Any, key: str, entry: MixtureEntry, to_messages: Callable) -> None:
    """Raise what loading the source would raise about its first row: the first rows a loader read
    (`factory.first_row`: a list or a `Rows`, as the loader returns rows) checked for the columns
    the mapping and the format name, then formatted. `key` is the entry's (`eval.mixture[0]`)."""
    rows, names = _nonempty(list(first), entry), _names(first, entry.source)
    _check_columns(entry, key, set(rows[0]), to_messages)
    Source(0, entry, rows, to_messages, names)._format(rows[0], 0)


def _python_source(loaded: Any, index: int, entry: MixtureEntry, to_messages: Callable, key: str) -> Source:
    rows, names = _nonempty(list(loaded), entry), _names(loaded, entry.source)
    _check_columns(entry, key, set().union(*(row.keys() for row in rows)), to_messages)
    reading, formatted = Source(index, entry, rows, to_messages, names), []
    with progress_bar(f"formatting {entry.source}", len(rows)) as advance:
        for first in range(0, len(rows), 10_000):
            chunk = rows[first:first + 10_000]
            formatted += [reading._format(row, i) for i, row in enumerate(chunk, start=first)]
            advance(len(chunk))
    return Source(index, entry, _to_arrow(formatted, names), None, names)


def _to_arrow(formatted: list[Formatted], names: RowNames) -> Any:
    """Formatted Python rows as a Dataset; a lone UTF-16 surrogate (which Python strings may hold,
    though arrow cannot) is an error naming its row."""
    import datasets

    batch = {"messages": [m for m, _, _ in formatted], "text": [t for _, t, _ in formatted],
             "rejected": [r for _, _, r in formatted]}
    try:
        return datasets.Dataset.from_dict(batch, features=features())
    except UnicodeEncodeError:
        for i, row in enumerate(formatted):
            try:
                json.dumps(row, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise UserError(f"{names(i)}: holds \\u{ord(exc.object[exc.start]):04x}, half of a UTF-16 "
                                "surrogate pair, not a character; fix or remove it") from None
        raise


def features() -> Any:
    """The columns of formatted rows: chat messages (a pair's chosen side), plain text, a pair's rejected side."""
    from datasets import Features, List, Value

    message = {"role": Value("string"), "content": Value("string")}
    return Features({"messages": List(message), "text": Value("string"), "rejected": List(message)})


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
    files = tuple((name, "line" if lines else "row") for name, lines in loaded.files)
    return RowNames(source, files, file_of=loaded.file_of, numbers=loaded.numbers)


def _check_columns(entry: MixtureEntry, key: str, columns: set[str], to_messages: Callable) -> None:
    """Every column the mapping names, and every one the format declares it needs (hookspecs.py), is
    there; else one line per kind of problem, naming the columns there are."""
    from framework.registry.factories import declared  # here: the registry imports this module

    there = ", ".join(sorted(columns))
    missing = [actual for actual in entry.columns.values() if actual not in columns]
    needs = declared(to_messages, "columns", default=()) or ()
    absent = [name for name in needs if name not in entry.columns and name not in columns]
    problems = []
    if missing:
        problems.append(f"{entry.source}: {key}.columns names missing column(s) {', '.join(missing)} "
                        f"(columns: {there})")
    if absent:
        problems.append(f"{entry.source}: {key}.format '{format_name(entry)}' needs column(s) {', '.join(absent)} "
                        f"(columns: {there}); map them with {key}.columns: {{{absent[0]}: <column>}}")
    if problems:
        raise UserError(problems)


def format_name(entry: MixtureEntry) -> str:
    """The entry's format name: `format` is a name, or a plugin selection with options."""
    return getattr(entry.format, "name", entry.format)
