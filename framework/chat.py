"""Render a conversation with the tokenizer's chat template and label only what is trained.

Templates rarely carry `{% generation %}` markers, so the assistant spans are found from the
template itself: the text of messages[:i] (with the generation prompt) and of messages[:i+1] are
prefixes of the whole rendering, and the characters between them are assistant turn i. One
tokenization of the whole text with offsets then maps those character spans onto tokens exactly.
"""
from __future__ import annotations

from typing import Any

from framework.types import IGNORE_INDEX, Sample


class TemplateError(ValueError):
    """The chat template renders a conversation in a way the label mask cannot follow."""


def render(tokenizer: Any, messages: list[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer: Any, messages: list[dict], text: str) -> list[tuple[int, int]]:
    """Character spans of each assistant turn: its content and end-of-turn token(s)."""
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(render(tokenizer, messages[:i], generation_prompt=True)) if i else 0
        upto = render(tokenizer, messages[: i + 1])
        if not text.startswith(upto):
            raise TemplateError(f"the chat template renders messages[:{i + 1}] differently inside "
                                "the whole conversation, so the label mask cannot be computed")
        # The template's separator after the end-of-turn token is never generated: not trained.
        end = len(upto.rstrip())
        spans.append((start, end))
    return spans


def encode_chat(tokenizer: Any, messages: list[dict]) -> Sample:
    """Token ids of the rendered conversation; labels are -100 outside assistant turns.

    `labels[t]` is the target at position t (models shift it), so `labels[0]` is always masked and
    `Sample.num_trainable` counts exactly the tokens the loss sees, packed or not.
    """
    text = render(tokenizer, messages)
    spans = assistant_spans(tokenizer, messages, text)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [IGNORE_INDEX] * len(encoded["input_ids"])
    span_index = 0
    for t, (token_start, _) in enumerate(encoded["offset_mapping"]):
        while span_index < len(spans) and token_start >= spans[span_index][1]:
            span_index += 1
        if span_index < len(spans) and token_start >= spans[span_index][0]:
            labels[t] = encoded["input_ids"][t]
    labels[0] = IGNORE_INDEX  # nothing predicts a row's first token, so it is never trained
    return Sample(list(encoded["input_ids"]), labels)
