"""Row formats: turn one raw row into chat messages (or, for `text`, a plain string).

A format raises ValueError with a short reason for a malformed row (a missing or wrongly typed
column, an unknown role); the pipeline adds the file and line (or the source and row number). A
row with nothing to train is not malformed: an empty message list or text, or a conversation
without an assistant turn, is returned as it is, and the pipeline drops and counts it
(`data.untrainable`). Which columns a format reads can be remapped per source (`columns:`); each
format declares the columns a row must have (`factory.columns`), so `seqtune check` can compare
them with a source's header before anything is read whole.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

from framework import hookimpl

ROLES = ("system", "user", "assistant", "tool")
# ShareGPT's role names (axolotl, LLaMA-Factory, FastChat) and the chat roles they mean. LLaMA-Factory's
# tool use: `function_call` is the assistant's call (trained, as its text) and `observation` the result.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "system": "system", "tool": "tool", "observation": "tool",
                  "function_call": "assistant"}


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


def sharegpt(row: dict[str, Any], *, roles: Optional[dict[str, str]] = None, role_key: str = "from",
             content_key: str = "value") -> list[dict[str, str]]:
    """`conversations`: a list of {from, value} turns (ShareGPT, as axolotl and LLaMA-Factory read it).

    `roles` maps further role names to system, user, assistant or tool (over the usual ones: human,
    gpt, system...); `role_key` and `content_key` name each turn's keys. The column itself is renamed
    like any format's, with the source's `columns: {conversations: <column>}`."""
    turns = row.get("conversations")
    if not isinstance(turns, list):
        raise ValueError(f"needs a 'conversations' list of {{{role_key}, {content_key}}} turns")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get(content_key), str):
            raise ValueError(f"conversations[{i}] needs a string '{content_key}'")
        name = turn.get(role_key)
        role = ((roles or {}).get(name) or SHAREGPT_ROLES.get(name)) if isinstance(name, str) else None
        if role is None:
            known = ", ".join(sorted({*SHAREGPT_ROLES, *(roles or {})}))
            raise ValueError(f"conversations[{i}] has unknown role {name!r} in '{role_key}' (known: {known}); map "
                             f"others with format: {{name: sharegpt, roles: {{<name>: system|user|assistant|tool}}}}")
        out.append({"role": role, "content": turn[content_key]})
    return out


def _sharegpt_rules(*, roles: Optional[dict[str, str]] = None, role_key: str = "from",
                    content_key: str = "value") -> Iterator[tuple[str, str]]:
    """Checked when the recipe is bound: each mapped role must be one the chat encoder knows."""
    for name, role in (roles or {}).items():
        if role not in ROLES:
            yield "roles", f"maps {name!r} to {role!r}; expected one of: {', '.join(ROLES)}"
    if role_key == content_key:
        yield "content_key", f"is the same key as role_key ('{role_key}')"


sharegpt.check = _sharegpt_rules
# The columns a row must have, before the source's `columns:` mapping (hookspecs.py: declared values).
messages.columns, sharegpt.columns, text.columns = ("messages",), ("conversations",), ("text",)
prompt_completion.columns, alpaca.columns = ("prompt", "completion"), ("instruction", "output")


@hookimpl
def seqtune_register_dataset_formats():
    return {"messages": messages, "prompt_completion": prompt_completion, "alpaca": alpaca, "text": text,
            "sharegpt": sharegpt}
