"""Label-mask edge cases (the token-by-token checks per template are in test_chat_masks.py)."""
from __future__ import annotations

import pytest

from framework.data.chat import TemplateError
from seqtune_testing import encode_chat
from framework.types import IGNORE_INDEX

CHAT = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Reverse: c a t"},
        {"role": "assistant", "content": "t a c"},
        {"role": "user", "content": "Uppercase: sun"},
        {"role": "assistant", "content": "SUN"}]


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
