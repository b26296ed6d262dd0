"""Label masks: only assistant content and its end-of-turn token are trained."""
from __future__ import annotations

import pytest

from framework.chat import TemplateError, encode_chat
from framework.types import IGNORE_INDEX

CHAT = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Reverse: c a t"},
        {"role": "assistant", "content": "t a c"},
        {"role": "user", "content": "Uppercase: sun"},
        {"role": "assistant", "content": "SUN"}]


def trained_text(tokenizer, sample) -> list[str]:
    """The trained tokens, decoded run by run (each contiguous trained span is one string)."""
    runs, current = [], []
    for token, label in zip(sample.input_ids, sample.labels):
        if label != IGNORE_INDEX:
            assert label == token  # labels are the inputs themselves; the model shifts
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs + ([tokenizer.decode(current)] if current else [])


def test_every_assistant_turn_and_its_end_token_are_trained_and_nothing_else(tiny_tokenizer):
    sample = encode_chat(tiny_tokenizer, CHAT)
    assert trained_text(tiny_tokenizer, sample) == ["t a c<|im_end|>", "SUN<|im_end|>"]


def test_tokens_are_the_whole_rendered_conversation(tiny_tokenizer):
    sample = encode_chat(tiny_tokenizer, CHAT)
    assert tiny_tokenizer.decode(sample.input_ids) == tiny_tokenizer.apply_chat_template(CHAT, tokenize=False)


def test_first_label_is_always_masked_and_counted_exactly(tiny_tokenizer):
    sample = encode_chat(tiny_tokenizer, [{"role": "assistant", "content": "hello"}])
    assert sample.labels[0] == IGNORE_INDEX
    assert sample.num_trainable == sum(label != IGNORE_INDEX for label in sample.labels[1:])


def test_a_template_that_rewrites_earlier_turns_is_refused(tiny_tokenizer):
    tokenizer = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    # Renders only the last message: messages[:2] is then not a prefix of the whole conversation.
    tokenizer.chat_template = ("{{ messages[-1]['role'] + ': ' + messages[-1]['content'] }}"
                               "{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(TemplateError):
        encode_chat(tokenizer, CHAT)
