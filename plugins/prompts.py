"""Prompt row formats for online RL (objective grpo): the conversation the model completes, and the
reference answer its rewards compare the completions with. The model writes the answer, so the
conversation must not already end with one."""
from __future__ import annotations

from typing import Any

from framework import Prompt, hookimpl
from plugins.formats import check_messages


def prompt_answer(row: dict[str, Any]) -> Prompt:
    """`prompt` (one user turn) and `answer` strings (a number is read as its text)."""
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("needs a non-empty string column 'prompt'")
    return Prompt([{"role": "user", "content": prompt}], _answer(row.get("answer"), "answer"))


def ground_truth(row: dict[str, Any]) -> Prompt:
    """`messages` and `ground_truth`, as open-instruct's RLVR sets hold them: the ground truth a
    string, a number, or a list of one string."""
    messages = check_messages(row.get("messages"), "messages")
    if not messages:
        raise ValueError("'messages' is empty: a prompt needs at least one turn")
    if messages[-1]["role"] == "assistant":
        raise ValueError("'messages' ends with an assistant turn; a prompt ends before the answer, which the "
                         "model writes: remove that turn (the reference answer is the ground_truth column)")
    value = row.get("ground_truth")
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return Prompt(messages, _answer(value, "ground_truth"))


def _answer(value: Any, column: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"needs a non-empty string (or number) column '{column}', got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return "null" if value is None else repr(value) if isinstance(value, str) else type(value).__name__


prompt_answer.columns = ("prompt", "answer")  # declared: `seqtune check` names the missing ones
ground_truth.columns = ("messages", "ground_truth")


@hookimpl
def seqtune_register_dataset_formats():
    return {"prompt_answer": prompt_answer, "ground_truth": ground_truth}
