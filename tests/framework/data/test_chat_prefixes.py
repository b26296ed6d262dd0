"""Label masks where a template's rendering is not prefix-stable: consecutive turns of one role.

tulu ends the conversation's last assistant turn at eos and puts a newline after it only when another
turn follows, so after an assistant turn the generation prompt (`...a</s><|assistant|>\n`) is not a
prefix of the whole text (`...a</s>\n<|assistant|>\nb</s>`). The expected renderings below are written
by hand from each template's documented layout (plugins/chat_templates/*.jinja), not from chat.py:
each assistant turn trains exactly its content and its end-of-turn marker.
"""
from __future__ import annotations

import copy

import pytest
from jinja2 import TemplateError as JinjaTemplateError

from framework.data.chat import Renderer, TemplateError, assistant_spans, encode_chats
from framework.data.tokenize import encode_rows
from framework.errors import UserError
from framework.registry import build_registry
from framework.types import IGNORE_INDEX
from seqtune_testing import TEST_CACHE, load_script

EOS = "<|im_end|>"  # both tokenizers' eos_token (tulu's end of an assistant turn); neither has a bos_token


def turns(*pairs: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in pairs]


def T(text: str) -> tuple[str, bool]:
    """A trained piece; plain strings are untrained."""
    return text, True


# The regression: two assistant turns in a row.
PAIR = turns(("user", "hi"), ("assistant", "a"), ("assistant", "b"))
# Two user turns, then two assistant turns twice, ending with a user turn (so no turn is the last).
SAME_ROLES = turns(("user", "Hi."), ("user", "Are you there?"), ("assistant", "Yes."),
                   ("assistant", "How can I help?"), ("user", "Add 2 and 3."), ("assistant", "5"),
                   ("assistant", "Anything else?"), ("user", "No."))
# A system turn between two assistant turns, then two assistant turns ending the conversation.
SYSTEM_BETWEEN = turns(("system", "Be brief."), ("user", "Hi."), ("assistant", "Hello."),
                       ("system", "Now answer in French."), ("assistant", "Bonjour."), ("assistant", "Ça va ?"))
# Gemma's only place for a system turn (folded into the user turn after it), then two users, two assistants.
SYSTEM_FIRST = turns(("system", "Be brief."), ("user", "Hi."), ("user", "There?"), ("assistant", "Yes."),
                     ("assistant", "Go on."))

CM_USER, CM_ASSISTANT = "<|im_start|>user\n", "<|im_start|>assistant\n"
L3 = "<|start_header_id|>{}<|end_header_id|>\n\n"
G_USER, G_MODEL, G_END = "<start_of_turn>user\n", "<start_of_turn>model\n", "<end_of_turn>"

EXPECTED = {
    ("chatml", "pair"): [f"{CM_USER}hi{EOS}\n{CM_ASSISTANT}", T(f"a{EOS}"), f"\n{CM_ASSISTANT}", T(f"b{EOS}"), "\n"],
    ("gemma", "pair"): [f"{G_USER}hi{G_END}\n{G_MODEL}", T(f"a{G_END}"), f"\n{G_MODEL}", T(f"b{G_END}"), "\n"],
    ("llama3", "pair"): [f"{L3.format('user')}hi<|eot_id|>{L3.format('assistant')}", T("a<|eot_id|>"),
                         L3.format("assistant"), T("b<|eot_id|>")],
    ("tulu", "pair"): ["<|user|>\nhi\n<|assistant|>\n", T(f"a{EOS}"), "\n<|assistant|>\n", T(f"b{EOS}")],

    ("chatml", "same_roles"): [
        f"{CM_USER}Hi.{EOS}\n{CM_USER}Are you there?{EOS}\n{CM_ASSISTANT}", T(f"Yes.{EOS}"),
        f"\n{CM_ASSISTANT}", T(f"How can I help?{EOS}"), f"\n{CM_USER}Add 2 and 3.{EOS}\n{CM_ASSISTANT}",
        T(f"5{EOS}"), f"\n{CM_ASSISTANT}", T(f"Anything else?{EOS}"), f"\n{CM_USER}No.{EOS}\n"],
    ("gemma", "same_roles"): [
        f"{G_USER}Hi.{G_END}\n{G_USER}Are you there?{G_END}\n{G_MODEL}", T(f"Yes.{G_END}"),
        f"\n{G_MODEL}", T(f"How can I help?{G_END}"), f"\n{G_USER}Add 2 and 3.{G_END}\n{G_MODEL}",
        T(f"5{G_END}"), f"\n{G_MODEL}", T(f"Anything else?{G_END}"), f"\n{G_USER}No.{G_END}\n"],
    ("llama3", "same_roles"): [
        f"{L3.format('user')}Hi.<|eot_id|>{L3.format('user')}Are you there?<|eot_id|>{L3.format('assistant')}",
        T("Yes.<|eot_id|>"), L3.format("assistant"), T("How can I help?<|eot_id|>"),
        f"{L3.format('user')}Add 2 and 3.<|eot_id|>{L3.format('assistant')}", T("5<|eot_id|>"),
        L3.format("assistant"), T("Anything else?<|eot_id|>"), f"{L3.format('user')}No.<|eot_id|>"],
    ("tulu", "same_roles"): [
        "<|user|>\nHi.\n<|user|>\nAre you there?\n<|assistant|>\n", T(f"Yes.{EOS}"), "\n<|assistant|>\n",
        T(f"How can I help?{EOS}"), "\n<|user|>\nAdd 2 and 3.\n<|assistant|>\n", T(f"5{EOS}"),
        "\n<|assistant|>\n", T(f"Anything else?{EOS}"), "\n<|user|>\nNo.\n"],

    ("chatml", "system_between"): [
        f"<|im_start|>system\nBe brief.{EOS}\n{CM_USER}Hi.{EOS}\n{CM_ASSISTANT}", T(f"Hello.{EOS}"),
        f"\n<|im_start|>system\nNow answer in French.{EOS}\n{CM_ASSISTANT}", T(f"Bonjour.{EOS}"),
        f"\n{CM_ASSISTANT}", T(f"Ça va ?{EOS}"), "\n"],
    ("llama3", "system_between"): [
        f"{L3.format('system')}Be brief.<|eot_id|>{L3.format('user')}Hi.<|eot_id|>{L3.format('assistant')}",
        T("Hello.<|eot_id|>"), f"{L3.format('system')}Now answer in French.<|eot_id|>{L3.format('assistant')}",
        T("Bonjour.<|eot_id|>"), L3.format("assistant"), T("Ça va ?<|eot_id|>")],
    ("tulu", "system_between"): [
        "<|system|>\nBe brief.\n<|user|>\nHi.\n<|assistant|>\n", T(f"Hello.{EOS}"),
        "\n<|system|>\nNow answer in French.\n<|assistant|>\n", T(f"Bonjour.{EOS}"), "\n<|assistant|>\n",
        T(f"Ça va ?{EOS}")],

    ("gemma", "system_first"): [
        f"{G_USER}Be brief.\n\nHi.{G_END}\n{G_USER}There?{G_END}\n{G_MODEL}", T(f"Yes.{G_END}"),
        f"\n{G_MODEL}", T(f"Go on.{G_END}"), "\n"],
}
CONVERSATIONS = {"pair": PAIR, "same_roles": SAME_ROLES, "system_between": SYSTEM_BETWEEN,
                 "system_first": SYSTEM_FIRST}
CASES = [pytest.param(template, name, id=f"{template}-{name}") for template, name in EXPECTED]
# Where the template's markers are whole tokens of the vocabulary (the tiny tokenizer splits every
# marker into single characters; Qwen2.5 has <|im_start|> and <|im_end|>), tokenizing the whole text
# at once already splits at every span edge: the encoded row must be exactly that tokenization.
WHOLE_TEXT_SPLITS = {("tiny", t) for t in ("chatml", "gemma", "llama3", "tulu")} | {("qwen", "chatml"),
                                                                                    ("qwen", "tulu")}


@pytest.fixture(scope="session")
def qwen_tokenizer():
    return load_script("tests/qwen_tokenizer").qwen25_tokenizer(TEST_CACHE)


@pytest.fixture(scope="module")
def templates() -> dict[str, str]:
    return {name: entry.factory for name, entry in build_registry().entries["chat_templates"].items()}


@pytest.fixture
def make(request, templates):
    """make(tokenizer_name, template) -> a copy of the tokenizer using that template (a bundled name or a
    template string)."""

    def _make(tokenizer_name: str, template: str):
        tokenizer = copy.copy(request.getfixturevalue(f"{tokenizer_name}_tokenizer"))
        tokenizer.chat_template = templates.get(template, template)
        assert (tokenizer.eos_token, tokenizer.bos_token) == (EOS, None)
        return tokenizer

    return _make


def split(expected: list) -> tuple[list[tuple[str, bool]], str, list[tuple[int, int]]]:
    """The hand-written pieces as (text, trained), the whole text, and the trained character spans."""
    pieces = [piece if isinstance(piece, tuple) else (piece, False) for piece in expected]
    spans, position = [], 0
    for text, trained in pieces:
        spans += [(position, position + len(text))] if trained else []
        position += len(text)
    return pieces, "".join(text for text, _ in pieces), spans


def trained_texts(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """Each contiguous run of trained tokens, decoded."""
    runs, current = [], []
    for token, label in zip(ids + [None], labels + [IGNORE_INDEX]):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs, current = runs + [tokenizer.decode(current)], []
    return runs


@pytest.mark.parametrize("template, name", CASES)
def test_each_assistant_turn_trains_its_content_and_end_of_turn(make, template, name):
    tokenizer = make("tiny", template)
    pieces, text, spans = split(EXPECTED[template, name])
    assert assistant_spans(tokenizer, CONVERSATIONS[name]) == (text, spans)


@pytest.mark.parametrize("tokenizer_name", ["tiny", "qwen"])
@pytest.mark.parametrize("template, name", CASES)
def test_the_encoded_row_is_the_whole_texts_tokens_cut_only_at_span_edges(make, tokenizer_name, template, name):
    tokenizer = make(tokenizer_name, template)
    pieces, text, _ = split(EXPECTED[template, name])
    sample = encode_chats(tokenizer, [CONVERSATIONS[name]])[0]
    assert trained_texts(tokenizer, sample.input_ids, sample.labels) == [t for t, trained in pieces if trained]
    want_ids, want_labels = [], []
    for piece, trained in pieces:  # each piece tokenized alone (untrained neighbours are never adjacent here)
        ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
        want_ids += ids
        want_labels += ids if trained else [IGNORE_INDEX] * len(ids)
    assert sample.input_ids == want_ids
    assert sample.labels == [IGNORE_INDEX] + want_labels[1:]
    if (tokenizer_name, template) in WHOLE_TEXT_SPLITS:
        assert sample.input_ids == tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("tokenizer_name", ["tiny", "qwen"])
def test_tulu_two_assistant_turns_in_a_row_train_no_newline(make, tokenizer_name):
    """The regression: the second turn's span started at its header's newline, which was trained, and
    the cut split Qwen's one token '>\\n' of the whole text."""
    tokenizer = make(tokenizer_name, "tulu")
    text = f"<|user|>\nhi\n<|assistant|>\na{EOS}\n<|assistant|>\nb{EOS}"
    got_text, spans = assistant_spans(tokenizer, PAIR)
    assert got_text == text and [text[s:e] for s, e in spans] == [f"a{EOS}", f"b{EOS}"]
    sample = encode_chats(tokenizer, [PAIR])[0]
    assert trained_texts(tokenizer, sample.input_ids, sample.labels) == [f"a{EOS}", f"b{EOS}"]
    assert sample.input_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert all("\n" not in tokenizer.decode([token]) for token, label in zip(sample.input_ids, sample.labels)
               if label != IGNORE_INDEX)


class CountingRenderer(Renderer):
    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.calls = 0

    def __call__(self, messages, generation_prompt=False):
        self.calls += 1
        return super().__call__(messages, generation_prompt)


@pytest.mark.parametrize("template, name", CASES)
def test_no_render_is_added_for_consecutive_turns(make, template, name):
    """Two renders per assistant turn, and one for the whole text unless it ends with an assistant turn:
    tulu's turns before a second assistant turn are the first turn's own rendering, already made."""
    messages = CONVERSATIONS[name]
    renderer = CountingRenderer(make("tiny", template))
    assistant_spans(renderer.tokenizer, messages, renderer)
    assistants = sum(message["role"] == "assistant" for message in messages)
    assert renderer.calls == 2 * assistants + (messages[-1]["role"] != "assistant")


def test_gemma_refuses_a_system_turn_between_assistant_turns_with_its_own_reason(make):
    tokenizer = make("tiny", "gemma")
    with pytest.raises(JinjaTemplateError, match="a system message may only come first"):
        encode_chats(tokenizer, [SYSTEM_BETWEEN])
    with pytest.raises(UserError) as info:
        encode_rows(tokenizer, [PAIR, SYSTEM_BETWEEN], [None, None], "assistant",
                    where=lambda i: f"rows.jsonl:{i + 1}", template="chat template 'gemma'")
    assert info.value.problems == ["rows.jsonl:2: chat template 'gemma' fails for this row: gemma: a system "
                                   "message may only come first (it is merged into the first user turn)"]


# Custom templates a user might write. Each renders a turn as `role: content` (an assistant's followed
# by </s>); they differ in what comes between turns.
TURN = ("{{- m['role'] + ': ' + m['content'] -}}{%- if m['role'] == 'assistant' -%}</s>{%- endif -%}")
GENERATION = "{%- if add_generation_prompt -%}{{- 'assistant: ' -}}{%- endif -%}"
# A blank line between turns, written only once another turn follows (prefix-unstable like tulu, for
# every turn): the separator is whitespace, so the turn after it is found past it.
JOINED = ("{%- for m in messages -%}" + TURN + "{%- if not loop.last -%}{{- '\\n\\n' -}}{%- endif -%}{%- endfor -%}"
          + GENERATION)
# The same, with a generation prompt that opens with the separator's last newline.
JOINED_PROMPT_NEWLINE = JOINED.replace("'assistant: '", "'\\nassistant: '")
# A visible separator written once another turn follows: not whitespace, so not the template's layout
# between turns as the generation prompt shows it.
DASHED = ("{%- for m in messages -%}" + TURN + "{%- if not loop.last -%}{{- ' ---\\n' -}}{%- endif -%}{%- endfor -%}"
          + GENERATION)
# Rewrites an earlier turn when a later one follows: the last message is bracketed, the others not.
BRACKETS_LAST = ("{%- for m in messages -%}{%- if loop.last -%}[{{- m['role'] -}}]{%- else -%}"
                 "{{- m['role'] -}}:{%- endif -%}{{- ' ' + m['content'] + '\\n' -}}{%- endfor -%}" + GENERATION)
# Prompts with a header the turns are never rendered with.
OTHER_HEADER = ("{%- for m in messages -%}" + TURN + "{{- '\\n' -}}{%- endfor -%}"
                "{%- if add_generation_prompt -%}{{- 'bot: ' -}}{%- endif -%}")
# Rewrites the last turn when asked for a generation prompt.
WAITING = ("{%- for m in messages -%}{{- m['role'] -}}{%- if add_generation_prompt and loop.last -%}"
           "{{- ' (waiting)' -}}{%- endif -%}{{- ': ' + m['content'] + '\\n' -}}{%- endfor -%}" + GENERATION)
# Marks the conversation's last assistant turn, so a conversation ending with a user turn renders it otherwise.
FINAL = ("{%- for m in messages -%}{{- m['role'] + ': ' + m['content'] -}}{%- if loop.last and m['role'] == "
         "'assistant' -%}{{- ' (final)' -}}{%- endif -%}{{- '\\n' -}}{%- endfor -%}" + GENERATION)
PAIR_THEN_USER = PAIR[:2] + turns(("user", "b"))


@pytest.mark.parametrize("template", [JOINED, JOINED_PROMPT_NEWLINE], ids=["joined", "prompt-opens-with-newline"])
def test_a_custom_template_separating_turns_only_when_another_follows_is_followed(make, template):
    messages = turns(("system", "S"), ("user", "hi"), ("assistant", "a"), ("assistant", "b"), ("user", "ok?"),
                     ("assistant", "yes"))
    pieces, text, spans = split(["system: S\n\nuser: hi\n\nassistant: ", T("a</s>"), "\n\nassistant: ", T("b</s>"),
                                 "\n\nuser: ok?\n\nassistant: ", T("yes</s>")])
    tokenizer = make("tiny", template)
    assert assistant_spans(tokenizer, messages) == (text, spans)
    sample = encode_chats(tokenizer, [messages])[0]
    assert trained_texts(tokenizer, sample.input_ids, sample.labels) == ["a</s>", "b</s>", "yes</s>"]


@pytest.mark.parametrize("template, messages, why", [
    (BRACKETS_LAST, PAIR, r"renders the turns before messages\[1\] differently once it follows "
                    r"\(\.\.\.'\[user\] hi\\n' where the whole conversation has "
                    r"\.\.\.'user: hi\\n\[assistant\] a\\n'\)"),
    (DASHED, PAIR, r"generation prompt before messages\[1\] is not how the conversation continues "
             r"\(\.\.\.'user: hiassistant: ' where the whole conversation has \.\.\.'user: hi ---\\nassistant: a"),
    (OTHER_HEADER, PAIR, r"generation prompt before messages\[1\] is not how the conversation continues "
                   r"\(\.\.\.'user: hi\\nbot: ' where the whole conversation has \.\.\.'user: hi\\nassistant: a"),
    (WAITING, PAIR, r"renders the turns before messages\[1\] differently with a generation prompt "
                    r"\(\.\.\.'user: hi\\n' where the prompt has \.\.\.'user \(waiting\): hi\\nassistant'\)"),
    (FINAL, PAIR_THEN_USER, r"renders an assistant turn differently inside the whole conversation "
                            r"\(\.\.\.'user: hi\\nassistant: a \(final\)\\n' where the whole conversation has "
                            r"\.\.\.'user: hi\\nassistant: a\\nuser: b\\n'\)"),
], ids=["rewrites-an-earlier-turn", "visible-separator", "other-header", "rewrites-for-the-prompt",
        "rewrites-the-last"])
def test_a_custom_template_that_cannot_be_followed_rejects_the_row_saying_why(make, template, messages, why):
    tokenizer = make("tiny", template)
    with pytest.raises(TemplateError, match=why):
        assistant_spans(tokenizer, messages)
    with pytest.raises(UserError) as info:
        encode_rows(tokenizer, [messages], [None], "assistant", where=lambda i: f"rows.jsonl:{i + 1}",
                    template="the tokenizer's own chat template")
    [line] = info.value.problems
    assert line.startswith("rows.jsonl:1: the tokenizer's own chat template fails for this row: the chat template")
    assert line.endswith("so the label mask cannot be computed") and "\n" not in line
