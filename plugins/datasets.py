"""Dataset loaders: read a mixture entry's source (a file, a folder or a hub name) into rows.

A loader returns an iterable of row dicts; a `datasets.Dataset` is best for large data because it
stays memory-mapped. Local files have a single split, `train`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from framework import UserError, hookimpl


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


def load_json(source: str, split: str) -> list[dict[str, Any]]:
    """JSONL (one object per line) or JSON (a list of objects, or {split: [...]}) files or folders."""
    rows: list[dict[str, Any]] = []
    for path in _files(source, (".jsonl", ".json")):
        rows += _read_jsonl(path, split) if path.suffix == ".jsonl" else _read_json(path, split)
    return rows


def _read_jsonl(path: Path, split: str) -> list[dict[str, Any]]:
    _local_split(str(path), split)
    with path.open(encoding="utf-8") as lines:
        return [_json_line(path, number, line) for number, line in enumerate(lines, start=1)
                if line.strip()]


def _json_line(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{number}: invalid JSON line: {exc.msg} (column {exc.colno})") from None
    if not isinstance(row, dict):
        raise UserError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
    return row


def _read_json(path: Path, split: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if isinstance(data, dict):
        if split not in data:
            raise UserError(f"{path}: has no split '{split}' (splits: {', '.join(data)})")
        data = data[split]
    elif isinstance(data, list):
        _local_split(str(path), split)
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of rows")
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise UserError(f"{path}: row {number}: expected a JSON object, got {type(row).__name__}")
    return data


def _load_files(kind: str, source: str, split: str, suffix: str):
    import datasets

    _local_split(source, split)
    files = [str(p) for p in _files(source, (suffix,))]
    try:
        return datasets.load_dataset(kind, data_files=files, split="train")
    except Exception as exc:  # pyarrow/pandas parse errors: name the source
        raise UserError(f"{source}: cannot read as {kind}: {str(exc).splitlines()[0]}") from None


def load_parquet(source: str, split: str):
    """A Parquet file, or a folder of them."""
    return _load_files("parquet", source, split, ".parquet")


def load_csv(source: str, split: str):
    """A CSV file with a header row, or a folder of them."""
    return _load_files("csv", source, split, ".csv")


def load_disk(source: str, split: str):
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    import datasets

    try:
        loaded = datasets.load_from_disk(source)
    except FileNotFoundError as exc:
        raise UserError(f"{source}: not a saved dataset folder: {exc}") from None
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
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{source}: cannot load split '{split}' with datasets.load_dataset: {reason}"
                        " (offline runs need the dataset in the local Hugging Face cache)") from None


@hookimpl
def seqtune_register_dataset_loaders():
    return {"json": load_json, "parquet": load_parquet, "csv": load_csv, "disk": load_disk,
            "hub": load_hub}
