"""Preference row formats: a pair of conversations with the same prompt turns that differ in their final
assistant turn, as the `dpo` objective (plugins/dpo.py) trains them."""
from __future__ import annotations

from framework import Pair, hookimpl
from plugins.formats import check_messages


def preference(row: dict) -> Pair:
    """`chosen` and `rejected`: message lists with the same prompt turns (Tulu 3's and UltraFeedback's
    preference sets)."""
    return _pair(check_messages(row.get("chosen"), "chosen"), check_messages(row.get("rejected"), "rejected"))


def preference_text(row: dict) -> Pair:
    """`prompt`, `chosen` and `rejected` strings: one user turn and the two answers."""
    texts = {}
    for column in ("prompt", "chosen", "rejected"):
        if not isinstance(row.get(column), str) or not row[column]:
            raise ValueError(f"needs a non-empty string column '{column}'")
        texts[column] = row[column]
    prompt = [{"role": "user", "content": texts["prompt"]}]
    return Pair(prompt + [{"role": "assistant", "content": texts["chosen"]}],
                prompt + [{"role": "assistant", "content": texts["rejected"]}])


def _pair(chosen: list[dict], rejected: list[dict]) -> Pair:
    for side, messages in (("chosen", chosen), ("rejected", rejected)):
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError(f"'{side}' must end with an assistant turn (the answer the pair compares)")
    if chosen[:-1] != rejected[:-1]:
        at = next((k for k, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)) - 1)
        raise ValueError(f"chosen and rejected differ before their final assistant turn (message {at}); the "
                         "two sides of a pair share their prompt turns")
    return Pair(chosen, rejected)


preference.columns = ("chosen", "rejected")  # declared: `seqtune check` names the missing ones
preference_text.columns = ("prompt", "chosen", "rejected")


@hookimpl
def seqtune_register_dataset_formats():
    return {"preference": preference, "preference_text": preference_text}
