"""Render a conversation with the tokenizer's chat template and label only what is trained.

Templates rarely carry `{% generation %}` markers, so the assistant spans are found from the
template itself: the text of messages[:i] (with the generation prompt) and of messages[:i+1] are
prefixes of the whole rendering, and the characters between them are assistant turn i. One
tokenization of the whole text with offsets then maps those character spans onto tokens exactly.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Any, Literal

from framework.types import IGNORE_INDEX, Sample

TrainOn = Literal["assistant", "last_assistant", "all"]


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
        if not text.startswith(upto) or start > len(upto):
            raise TemplateError(f"the chat template renders messages[:{i + 1}] differently inside "
                                "the whole conversation, so the label mask cannot be computed")
        # The template's separator after the end-of-turn token is never generated: not trained.
        spans.append((start, len(upto.rstrip())))
    return spans


def label_spans(input_ids: list[int], offsets: list[tuple[int, int]],
                spans: list[tuple[int, int]]) -> list[int]:
    """Labels that copy input_ids for tokens starting inside a span, -100 elsewhere."""
    starts = [start for start, _ in offsets]
    labels = [IGNORE_INDEX] * len(input_ids)
    for span_start, span_end in spans:
        lo, hi = bisect_left(starts, span_start), bisect_left(starts, span_end)
        labels[lo:hi] = input_ids[lo:hi]
    if labels:
        labels[0] = IGNORE_INDEX  # nothing predicts a row's first token, so it is never trained
    return labels


def encode_chats(tokenizer: Any, conversations: list[list[dict]], train_on: TrainOn = "assistant"
                 ) -> list[Sample]:
    """Encode a batch of conversations with one batched tokenizer call.

    `labels[t]` is the target at position t (models shift it), so `labels[0]` is always masked and
    `Sample.num_trainable` counts exactly the tokens the loss sees, packed or not.
    """
    texts = [render(tokenizer, messages) for messages in conversations]
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    samples = []
    for messages, text, ids, offsets in zip(conversations, texts, encoded["input_ids"],
                                            encoded["offset_mapping"]):
        if train_on == "all":
            spans = [(0, len(text))]
        else:
            spans = assistant_spans(tokenizer, messages, text)
            spans = spans[-1:] if train_on == "last_assistant" else spans
        samples.append(Sample(list(ids), label_spans(ids, offsets, spans)))
    return samples


def encode_chat(tokenizer: Any, messages: list[dict], train_on: TrainOn = "assistant") -> Sample:
    """One conversation: token ids of its rendering, labels -100 outside the trained turns."""
    return encode_chats(tokenizer, [messages], train_on)[0]
