"""Row formats: turn one raw row into chat messages (or, for `text`, a plain string).

A format raises ValueError with a short reason for a malformed row (a missing or wrongly typed
column, an unknown role); the pipeline adds the file and line (or the source and row number). A
row with nothing to train is not malformed: an empty message list or text, or a conversation
without an assistant turn, is returned as it is, and the pipeline drops and counts it
(`data.untrainable`). Which columns a format reads can be remapped per source (`columns:`).
"""
from __future__ import annotations

from typing import Any

from framework import hookimpl

ROLES = ("system", "user", "assistant", "tool")


def _string(row: dict[str, Any], column: str, allow_empty: bool = False) -> str:
    value = row.get(column)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise ValueError(f"needs a {'' if allow_empty else 'non-empty '}string column '{column}'")
    return value


def messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """`messages`: a list of {role, content} (Tulu / OpenAI chat format)."""
    return check_messages(row.get("messages"), "messages")


def check_messages(msgs: Any, column: str) -> list[dict[str, str]]:
    """{role, content} messages checked for their types and roles (an empty list is returned)."""
    if not isinstance(msgs, list):
        raise ValueError(f"needs a '{column}' list of {{role, content}} messages")
    for i, msg in enumerate(msgs):
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), str):
            raise ValueError(f"{column}[{i}] needs a string 'content'")
        if msg.get("role") not in ROLES:
            raise ValueError(f"{column}[{i}] has unknown role {msg.get('role')!r} "
                             f"(expected one of: {', '.join(ROLES)})")
    return [{"role": msg["role"], "content": msg["content"]} for msg in msgs]


def prompt_completion(row: dict[str, Any]) -> list[dict[str, str]]:
    """`prompt` and `completion`: strings, or message lists (conversational prompt-completion)."""
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, list) and isinstance(completion, list):
        return check_messages(prompt + completion, "prompt + completion")
    return [{"role": "user", "content": _string(row, "prompt")},
            {"role": "assistant", "content": _string(row, "completion")}]


def alpaca(row: dict[str, Any]) -> list[dict[str, str]]:
    """`instruction`, optional `input`, `output` (Stanford Alpaca)."""
    instruction, extra = _string(row, "instruction"), row.get("input") or ""
    if not isinstance(extra, str):
        raise ValueError("column 'input' must be a string")
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": _string(row, "output")}]


def text(row: dict[str, Any]) -> str:
    """`text`: plain language modelling; every token is trained, and an EOS ends each document."""
    return _string(row, "text", allow_empty=True)


@hookimpl
def seqtune_register_dataset_formats():
    return {"messages": messages, "prompt_completion": prompt_completion, "alpaca": alpaca, "text": text}
