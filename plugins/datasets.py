"""Dataset loaders (read a source into rows) and formats (turn a row into chat messages)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from framework import UserError, hookimpl

ROLES = ("system", "user", "assistant", "tool")


def load_json(source: str, split: str) -> list[dict[str, Any]]:
    """A local .jsonl file (one row per line) or .json file (a list of rows, or {split: rows})."""
    path = Path(source)
    if not path.is_file():
        raise UserError(f"{source}: no such file")
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as lines:
            return [_json_line(path, number, line) for number, line in enumerate(lines, start=1)
                    if line.strip()]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{source}:{exc.lineno}: invalid JSON: {exc.msg}")
    if isinstance(data, dict):
        if split not in data:
            raise UserError(f"{source}: has no split '{split}' (splits: {', '.join(data)})")
        data = data[split]
    if not isinstance(data, list):
        raise UserError(f"{source}: expected a list of rows")
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise UserError(f"{source}: row {number}: expected a JSON object, got {type(row).__name__}")
    return data


def load_hub(source: str, split: str):
    """A Hugging Face hub dataset (or a local dataset folder) through `datasets.load_dataset`."""
    import datasets

    try:
        return datasets.load_dataset(source, split=split)
    except Exception as exc:  # datasets raises many types (offline, missing, gated); all mean "cannot load"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{source}: cannot load split '{split}' with datasets.load_dataset: {reason}"
                        " (offline runs need the dataset in the local Hugging Face cache)") from None


def _json_line(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{number}: invalid JSON line: {exc.msg} (column {exc.colno})")
    if not isinstance(row, dict):
        raise UserError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
    return row


def messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """Rows with a `messages` list of {role, content} (Tulu / OpenAI chat format)."""
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ValueError("needs a non-empty 'messages' list")
    for i, msg in enumerate(msgs):
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), str):
            raise ValueError(f"messages[{i}] needs a string 'content'")
        if msg.get("role") not in ROLES:
            raise ValueError(f"messages[{i}] has unknown role {msg.get('role')!r} "
                             f"(expected one of: {', '.join(ROLES)})")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


@hookimpl
def seqtune_register_dataset_loaders():
    return {"json": load_json, "hub": load_hub}


@hookimpl
def seqtune_register_dataset_formats():
    return {"messages": messages}
