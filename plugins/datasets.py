"""Dataset loaders: read a mixture entry's source (a file, a folder or a hub name) into rows.

A loader returns an iterable of row dicts (a `framework.Rows` when it knows each row's file and
line, so later errors can name them), or a `datasets.Dataset`, best for large data because it stays
memory-mapped. Local files have a single split, `train`. Each local loader also declares
`first_row` (plugins/first_rows.py): the source's first row read cheaply, named as the loader
names it, so `seqtune check` can try it without reading the source whole.
"""
from __future__ import annotations

import codecs
import csv
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from framework import Rows, SourceTable, UserError, hookimpl, progress_bar
from plugins.jsonl import read_jsonl_native

BOM = codecs.BOM_UTF8  # some editors start a UTF-8 file with it; it is not part of the first row
NESTING = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{}]')  # JSON strings (skipped) and brackets


def _files(source: str, suffixes: tuple[str, ...]) -> list[Path]:
    """The file itself, or every file with one of `suffixes` in a folder (sorted, recursive)."""
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)
        if files:
            return files
        raise UserError(f"{source}: folder holds no {' or '.join(suffixes)} files")
    raise UserError(f"{source}: no such file or folder")


def _local_split(source: str, split: str) -> None:
    if split != "train":
        raise UserError(f"{source}: local files have one split, 'train' (got split '{split}')")


def load_json(source: str, split: str) -> SourceTable | Rows:
    """JSONL (one object per line) or JSON (a list of objects, or {split: [...]}) files or folders.

    JSON Lines are read by pyarrow's native reader into a memory-mapped arrow file, at any size;
    rows it cannot read (bad bytes, mixed types, a schema that changes between files) are read
    line by line instead, where every problem names its line. Each row keeps its file and line
    (a `.json` file's rows: their index in its list), so any later error about a row names it."""
    files = _files(source, (".jsonl", ".json"))
    if all(path.suffix == ".jsonl" for path in files):
        _local_split(source, split)
        table = read_jsonl_native(files, source)
        if table is not None:
            return table
    rows = Rows()
    for path in files:
        if path.suffix == ".jsonl":
            rows.add_file(str(path), *_read_jsonl(path, split))
        else:
            rows.add_file(str(path), _read_json(path, split))
    if not rows:
        held = "the file holds" if Path(source).is_file() else f"its {len(files)} file(s) hold"
        raise UserError(f"{source}: {held} no rows; give it rows or remove it from data.mixture")
    return rows


def _read_jsonl(path: Path, split: str) -> tuple[list[dict[str, Any]], list[int]]:
    """The rows of a JSON Lines file and their physical lines (1-based, blank lines counted).

    A lone surrogate escape ("\\ud800") parses here; the pipeline names its line when it first
    encodes the text, so ordinary lines pay nothing for that check."""
    _local_split(str(path), split)
    rows, lines, read = [], [], 0
    try:  # lines end at "\n" only, as the byte count of an invalid UTF-8 error below does
        with path.open(encoding="utf-8-sig", newline="\n") as text, \
                progress_bar(f"reading {path} line by line", path.stat().st_size / 2**20, unit="MB") as advance:
            for number, line in enumerate(text, start=1):
                if line.strip():
                    rows.append(_json_line(path, number, line))
                    lines.append(number)
                if number % 10_000 == 0:  # the decoder's position in the file: close enough for a bar
                    advance((text.buffer.tell() - read) / 2**20)
                    read = text.buffer.tell()
    except UnicodeDecodeError as exc:  # the text decoder reads in chunks: find the line in the bytes
        _decode(path, path.read_bytes(), 1)
        raise UserError(f"{path}: not valid UTF-8 ({exc.reason}); save the file as UTF-8") from None
    return rows, lines


def _json_line(path: Path, number: int, line: str) -> dict[str, Any]:
    row = _loads(line, path, number)
    if not isinstance(row, dict):
        raise UserError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
    return row


def _read_json(path: Path, split: str) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    text = _decode(path, raw[len(BOM):] if raw.startswith(BOM) else raw, 1)
    if not text.strip():
        return []  # an empty file has no rows (load_json says so when the whole source has none)
    data = _loads(text, path)
    if isinstance(data, dict):
        if split not in data:
            raise UserError(f"{path}: has no split '{split}' (splits: {', '.join(data)})")
        data = data[split]
    elif isinstance(data, list):
        _local_split(str(path), split)
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of rows")
    return _objects(path, data)


def _objects(path: Path, rows: list[Any]) -> list[dict[str, Any]]:
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise UserError(f"{path}: row {number}: expected a JSON object, got {type(row).__name__}")
    return rows


def _decode(path: Path, raw: bytes, first_line: int) -> str:
    """UTF-8 text, or one line naming the line (counted from `first_line`) of the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + raw.count(b"\n", 0, exc.start)
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {column} of the "
                        "line); save the file as UTF-8") from None


def _loads(text: str, path: Path, line: int | None = None) -> Any:
    """`json.loads` of a JSONL line (`line`) or a whole file, every failure one line naming where."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where, reason = f"{path}:{line or exc.lineno}", f"{exc.msg} (column {exc.colno})"
    except RecursionError:
        where = f"{path}:{line or _deepest_line(text)}"
        reason = f"nested deeper than the parser's limit ({sys.getrecursionlimit():,} levels)"
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        where, reason = f"{path}:{line}" if line else str(path), str(exc).splitlines()[0]
    raise UserError(f"{where}: invalid JSON{' line' if line else ''}: {reason}")


def _deepest_line(text: str) -> int:
    """The line where nesting first reaches its greatest depth: the place a parser gave up."""
    depth = deepest = at = 0
    for token in NESTING.finditer(text):
        if token.group() in ("[", "{"):
            depth += 1
            if depth > deepest:
                deepest, at = depth, token.start()
        elif token.group() in ("]", "}"):
            depth -= 1
    return text.count("\n", 0, at) + 1


def _load_files(kind: str, source: str, split: str, suffix: str):
    import datasets
    from datasets.utils import logging as ds_logging

    _local_split(source, split)
    files = _files(source, (suffix,))
    options = _as_written(files) if kind == "csv" else {}
    verbosity = ds_logging.get_verbosity()
    ds_logging.set_verbosity(ds_logging.CRITICAL)  # its "Failed to read file" log repeats our error
    try:
        return datasets.load_dataset(kind, data_files=[str(p) for p in files], split="train", **options)
    except Exception as exc:  # pyarrow/pandas parse errors, wrapped by datasets: name the source
        cause = _root_cause(exc)
        _name_the_file(kind, files, cause)
        raise UserError(f"{source}: cannot read as {kind}: {_first_line(cause)}") from None
    finally:
        ds_logging.set_verbosity(verbosity)


def _as_written(files: list[Path]) -> dict[str, Any]:
    """pandas options that keep every cell of these CSV files as written. A CSV has no types: pandas
    would guess that `4` is a number and that `NA` or an empty cell is missing, and no format reads
    those as the text they are (a column of numeric answers could never train)."""
    widest = 0
    for path in files:
        with path.open("rb") as data:
            widest = max(widest, len(next(csv_records(path, data), [])))
    return {"converters": {column: str for column in range(widest)}, "na_filter": False}


def csv_records(path: Path, data: Iterable[bytes]) -> Iterator[list[str]]:
    """A CSV file's records (`data`: the file open in binary), blank lines skipped as pandas skips them."""
    return (record for record in csv.reader(decoded_lines(path, data)) if record)


def decoded_lines(path: Path, data: Iterable[bytes]) -> Iterator[str]:
    """A file's lines decoded one by one: a bad byte names its line, and nothing past the lines read is
    decoded. A leading byte-order mark is dropped."""
    for number, raw in enumerate(data, start=1):
        yield _decode(path, raw.removeprefix(BOM) if number == 1 else raw, number)


def _root_cause(exc: BaseException) -> BaseException:
    for _ in range(10):  # datasets wraps the parser's error (DatasetGenerationError and the like)
        if exc.__cause__ is None or not str(exc.__cause__).strip():
            break
        exc = exc.__cause__
    return exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _name_the_file(kind: str, files: list[Path], cause: BaseException) -> None:
    """Raise a sharper error than the parser's when a file is not UTF-8 or holds no rows."""
    if kind == "csv" and isinstance(cause, UnicodeDecodeError):
        for path in files:
            _decode(path, path.read_bytes(), 1)  # raises naming the line of the first bad byte
    empty = [path for path in files if _holds_no_rows(kind, path)]
    # An empty shard beside others reads as no rows; it fails alone, or as a CSV without even a header.
    unreadable = [path for path in empty if kind == "csv" and not path.read_bytes().strip()]
    if unreadable or (empty and len(empty) == len(files)):
        raise UserError(f"{(unreadable or empty)[0]}: the file holds no rows; give it rows or remove it "
                        "from data.mixture")


def _holds_no_rows(kind: str, path: Path) -> bool:
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows == 0
        except Exception:  # not parquet at all: the parser's own error says so
            return False
    with path.open("rb") as lines:  # csv: nothing but a header row
        return sum(1 for line in lines if line.strip()) <= 1


def load_parquet(source: str, split: str):
    """A Parquet file, or a folder of them."""
    return _load_files("parquet", source, split, ".parquet")


def load_csv(source: str, split: str):
    """A CSV file with a header row, or a folder of them; every cell is text, as written."""
    return _load_files("csv", source, split, ".csv")


def load_disk(source: str, split: str):
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    import datasets

    try:
        loaded = datasets.load_from_disk(source)
    except FileNotFoundError as exc:
        raise UserError(f"{source}: not a saved dataset folder: {exc}") from None
    except Exception as exc:  # a damaged arrow file or state.json: pyarrow's and json's many errors
        raise UserError(f"{source}: cannot read the saved dataset: {_first_line(_root_cause(exc))}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise UserError(f"{source}: has no split '{split}' (splits: {', '.join(loaded)})")
        return loaded[split]
    _local_split(source, split)
    return loaded


def load_hub(source: str, split: str):
    """A Hugging Face hub dataset through `datasets.load_dataset` (its local cache when offline)."""
    import datasets

    try:
        return datasets.load_dataset(source, split=split)
    except Exception as exc:  # datasets raises many types (offline, missing, gated); all mean "cannot load"
        raise UserError(f"{source}: cannot load split '{split}' with datasets.load_dataset: {_first_line(exc)}"
                        " (offline runs need the dataset in the local Hugging Face cache)") from None


def _read_first_row(reader: str) -> Callable[[str, str], Any]:
    """A loader's declared `first_row`: the reader of that name in plugins/first_rows.py, imported when
    called (it reads with this module's helpers)."""

    def first_row(source: str, split: str) -> Any:
        from plugins import first_rows

        return getattr(first_rows, reader)(source, split)

    return first_row


load_json.first_row, load_csv.first_row = _read_first_row("first_json_row"), _read_first_row("first_csv_row")
load_parquet.first_row, load_disk.first_row = _read_first_row("first_parquet_row"), _read_first_row("first_saved_row")


@hookimpl
def seqtune_register_dataset_loaders():
    return {"json": load_json, "parquet": load_parquet, "csv": load_csv, "disk": load_disk,
            "hub": load_hub}
