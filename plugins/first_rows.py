"""The first row of a local source, read cheaply: the `first_row` each local loader of
plugins/datasets.py declares, so `seqtune check` can try a source's columns and its format on it
without reading the source whole (a few lines, a CSV header and record, a Parquet row group, an
arrow record batch). Each names the row as its loader does, and reports any problem in what it
reads with its loader's own message.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from framework import Rows, UserError
from plugins.datasets import (BOM, _files, _first_line, _json_line, _local_split, _objects, _read_json, csv_records,
                              decoded_lines)


def first_json_row(source: str, split: str) -> Rows:
    """load_json's first row: the first non-blank line of a JSON Lines file, or the first element of
    a `.json` list, from the first file that has one; any problem in what it reads is load_json's."""
    files = _files(source, (".jsonl", ".json"))
    for path in files:
        found = _first_jsonl(path, split) if path.suffix == ".jsonl" else _first_json(path, split)
        if found is not None:
            rows = Rows()
            rows.add_file(str(path), [found[0]], None if found[1] is None else [found[1]])
            return rows
    held = "the file holds" if len(files) == 1 else f"its {len(files)} file(s) hold"
    raise UserError(f"{source if len(files) > 1 else files[0]}: {held} no rows; give it rows or remove it "
                    "from data.mixture")


def _first_jsonl(path: Path, split: str) -> tuple[dict[str, Any], int] | None:
    """The first non-blank line's row and its physical line; lines after it are never decoded."""
    _local_split(str(path), split)
    with path.open("rb") as data:
        for number, line in enumerate(decoded_lines(path, data), start=1):
            if line.strip():
                return _json_line(path, number, line), number
    return None


def _first_json(path: Path, split: str) -> tuple[dict[str, Any], None] | None:
    """The first element of a `.json` list, reading on until it parses; a file of splits
    (`{split: [...]}`), or a list whose first element never parses, is read whole by `_read_json`."""
    raw, size = b"", 1 << 16
    with path.open("rb") as data:
        while chunk := data.read(size):
            raw, size = raw + chunk, size * 2  # doubling: a long first element is decoded O(n) in all
            body = _decoded_head(raw.removeprefix(BOM)).lstrip()
            if body and body[0] != "[":
                break
            element = body[1:].lstrip()
            if element.startswith("]"):
                return None
            try:
                row, _ = json.JSONDecoder().raw_decode(element)
            except (json.JSONDecodeError, RecursionError):
                continue  # not all there yet; or malformed, which _read_json reports once read whole
            _local_split(str(path), split)
            return _objects(path, [row])[0], None
    rows = _read_json(path, split)
    return (rows[0], None) if rows else None


def _decoded_head(raw: bytes) -> str:
    """The text of `raw` up to its first byte that does not decode: a character the read cut in two,
    or a bad byte, which `_read_json` names if the first element is not whole before it."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return raw[:exc.start].decode("utf-8")


def first_csv_row(source: str, split: str) -> list[dict[str, Any]]:
    """load_csv's first row: the header and the first record of the first file with one, every cell
    as written (as load_csv reads it); an unnamed column is named as pandas names it."""
    _local_split(source, split)
    files = _files(source, (".csv",))
    for path in files:
        with path.open("rb") as data:
            records = csv_records(path, data)
            header, record = next(records, None), next(records, None)
        if header is None:
            raise UserError(f"{path}: the file holds no rows; give it rows or remove it from data.mixture")
        if record is not None:  # a short record's missing cells are empty, as load_csv reads them
            return [{name or f"Unnamed: {i}": record[i] if i < len(record) else "" for i, name in enumerate(header)}]
    raise UserError(f"{files[0]}: the file holds no rows; give it rows or remove it from data.mixture")


def first_parquet_row(source: str, split: str) -> list[dict[str, Any]]:
    """load_parquet's first row: the first row group that has rows (the footer says which)."""
    import pyarrow.parquet as pq

    _local_split(source, split)
    files = _files(source, (".parquet",))
    for path in files:
        try:
            batch = next(pq.ParquetFile(path).iter_batches(batch_size=1), None)
        except Exception as exc:  # not parquet, or damaged: pyarrow's many errors
            raise UserError(f"{source}: cannot read as parquet: {_first_line(exc)}") from None
        if batch is not None and batch.num_rows:
            return batch.to_pylist()[:1]
    raise UserError(f"{files[0]}: the file holds no rows; give it rows or remove it from data.mixture")


def first_saved_row(source: str, split: str) -> list[dict[str, Any]]:
    """load_disk's first row, from the first arrow file its state.json lists (no rows: an empty list)."""
    import pyarrow as pa

    folder = Path(source)
    try:
        if (folder / "dataset_dict.json").is_file():
            splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
            if split not in splits:
                raise UserError(f"{source}: has no split '{split}' (splits: {', '.join(splits)})")
            folder = folder / split
        else:
            _local_split(source, split)
        for file in json.loads((folder / "state.json").read_text())["_data_files"]:
            with pa.memory_map(str(folder / file["filename"])) as mapped:
                for batch in pa.ipc.open_stream(mapped):
                    if batch.num_rows:
                        return batch.slice(0, 1).to_pylist()
    except FileNotFoundError as exc:
        raise UserError(f"{source}: not a saved dataset folder: {exc}") from None
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:  # a damaged file
        raise UserError(f"{source}: cannot read the saved dataset: {_first_line(exc)}") from None
    return []
