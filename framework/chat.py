"""Render a conversation with the tokenizer's chat template and label only what is trained.

Templates rarely carry `{% generation %}` markers, so the assistant spans are found from the
template itself: the text of messages[:i] (with the generation prompt) and of messages[:i+1] are
prefixes of the whole rendering, and the characters between them are assistant turn i. One
tokenization of the whole text with offsets then maps those character spans onto tokens exactly.
"""
from __future__ import annotations

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


def _first_token_from(encoding: Any, char: int, text_len: int) -> int:
    """Index of the first token that starts at or after `char` (a token straddling it is excluded)."""
    probe = char
    index = encoding.char_to_token(probe) if probe < text_len else None
    while index is None and probe < text_len - 1:  # characters no token covers (dropped spaces)
        probe += 1
        index = encoding.char_to_token(probe)
    if index is None:
        return len(encoding.ids)
    return index if encoding.token_to_chars(index)[0] >= char else index + 1


def labels_for(ids: list[int], token_ranges: list[tuple[int, int]]) -> list[int]:
    """Labels that copy `ids` inside the token ranges and are -100 elsewhere (and at position 0)."""
    labels = [IGNORE_INDEX] * len(ids)
    for lo, hi in token_ranges:
        labels[lo:hi] = ids[lo:hi]
    if labels:
        labels[0] = IGNORE_INDEX  # nothing predicts a row's first token, so it is never trained
    return labels


def _spans(tokenizer: Any, messages: list[dict], text: str, train_on: TrainOn) -> list[tuple[int, int]]:
    if train_on == "all":
        return [(0, len(text))]
    spans = assistant_spans(tokenizer, messages, text)
    return spans[-1:] if train_on == "last_assistant" else spans


def encode_chats(tokenizer: Any, conversations: list[list[dict]], train_on: TrainOn = "assistant"
                 ) -> list[Sample]:
    """Encode a batch of conversations with one batched tokenizer call.

    `labels[t]` is the target at position t (models shift it), so `labels[0]` is always masked and
    `Sample.num_trainable` counts exactly the tokens the loss sees, packed or not.
    """
    texts = [render(tokenizer, messages) for messages in conversations]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return [_encode_by_prefixes(tokenizer, m, t, train_on) for m, t in zip(conversations, texts)]
    samples = []
    for messages, text, encoding in zip(conversations, texts,
                                        backend.encode_batch(texts, add_special_tokens=False)):
        ranges = [(_first_token_from(encoding, a, len(text)), _first_token_from(encoding, b, len(text)))
                  for a, b in _spans(tokenizer, messages, text, train_on)]
        samples.append(Sample(encoding.ids, labels_for(encoding.ids, ranges)))
    return samples


def _encode_by_prefixes(tokenizer: Any, messages: list[dict], text: str, train_on: TrainOn) -> Sample:
    """For tokenizers without offsets: a span starts after as many tokens as the text before it has."""
    def count(prefix: str) -> int:
        return len(tokenizer(prefix, add_special_tokens=False)["input_ids"])

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ranges = [(count(text[:a]), count(text[:b])) for a, b in _spans(tokenizer, messages, text, train_on)]
    return Sample(ids, labels_for(ids, ranges))


def encode_chat(tokenizer: Any, messages: list[dict], train_on: TrainOn = "assistant") -> Sample:
    """One conversation: token ids of its rendering, labels -100 outside the trained turns."""
    return encode_chats(tokenizer, [messages], train_on)[0]
