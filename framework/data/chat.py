"""Render a conversation with the tokenizer's chat template and label only what is trained.

Templates rarely carry `{% generation %}` markers, so the assistant spans are found from the
template itself: the text of messages[:i] (with the generation prompt) and of messages[:i+1] are
prefixes of the whole rendering, and the characters between them are assistant turn i. Where the
generation prompt is not such a prefix because the template separates turns only once another
follows (tulu ends the conversation's last assistant turn at eos, and puts a newline after it when
another comes), the turn starts after the generation prompt's header found in the whole text, past
that separating whitespace (untrained); any other difference rejects the row with a TemplateError.

The rendering is then tokenized piece by piece, cut at the span edges, so no token can straddle
a trained and an untrained piece: the trained tokens are exactly the tokens of each assistant turn
tokenized on its own, which is also how the model produces them after a generation prompt. This
equals tokenizing the whole text at once where that already has a token boundary at every span edge
(not always: ChatML's newline after the role is plain text and can merge with an answer's leading
newlines).
"""
from __future__ import annotations

from typing import Any, Literal

from framework.types import IGNORE_INDEX, Sample

TrainOn = Literal["assistant", "last_assistant", "all"]


class TemplateError(ValueError):
    """The chat template renders a conversation in a way the label mask cannot follow."""


def render(tokenizer: Any, messages: list[dict], generation_prompt: bool = False) -> str:
    if not messages:  # apply_chat_template refuses an empty conversation; the template itself does not
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(conversations=[[]], chat_template=tokenizer.get_chat_template(),
                                            add_generation_prompt=generation_prompt,
                                            **tokenizer.special_tokens_map)
        return rendered[0]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


class Renderer:
    """`render` for many plain {role, content} conversations: the compiled template is called
    directly, skipping apply_chat_template's per-call conversion of message objects (a third of
    preprocessing time). Falls back to `render` when transformers' compiler is not available."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        try:
            from transformers.utils.chat_template_utils import _compile_jinja_template

            self.compiled = _compile_jinja_template(tokenizer.get_chat_template())
            self.variables = dict(tokenizer.special_tokens_map)
        except (ImportError, AttributeError, ValueError):  # an older transformers, or a duck tokenizer
            self.compiled = None

    def __call__(self, messages: list[dict], generation_prompt: bool = False) -> str:
        if self.compiled is None or not messages:
            return render(self.tokenizer, messages, generation_prompt)
        return self.compiled.render(messages=messages, tools=None, documents=None,
                                    add_generation_prompt=generation_prompt, **self.variables)


def assistant_spans(tokenizer: Any, messages: list[dict], renderer: Renderer | None = None
                    ) -> tuple[str, list[tuple[int, int]]]:
    """The whole rendering, and the character span of each assistant turn in it: the turn's content
    and its end-of-turn token(s)."""
    render = renderer or Renderer(tokenizer)
    spans, prefixes = [], []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt, upto = render(messages[:i], generation_prompt=True), render(messages[: i + 1])
        # After an assistant turn, the turns before are that turn's own rendering: no extra render
        before = prefixes[-1] if i and messages[i - 1]["role"] == "assistant" else None
        start = _turn_start(render, messages, i, prompt, upto, before)
        prefixes.append(upto)
        # The template's separator after the end-of-turn token is never generated: not trained (an
        # empty turn with no end-of-turn marker is an empty span, not one ending inside its header).
        spans.append((start, max(start, len(upto.rstrip()))))
    # A conversation that ends with an assistant turn is its own last prefix: no extra render.
    ends_with_assistant = bool(messages) and messages[-1]["role"] == "assistant"
    text = prefixes[-1] if ends_with_assistant else render(messages)
    for prefix in prefixes:
        if not text.startswith(prefix):
            raise TemplateError("the chat template renders an assistant turn differently inside the whole "
                                f"conversation ({_difference(prefix, text)}), so the label mask cannot be computed")
    return text, spans


def _turn_start(render: Renderer, messages: list[dict], i: int, prompt: str, upto: str, before: str | None) -> int:
    """Where assistant turn i's content starts in `upto` (the rendering of messages[:i+1]), given `prompt`
    (messages[:i] with the generation prompt) and `before` (messages[:i], rendered here when None)."""
    if upto.startswith(prompt):
        return len(prompt)
    # Rendered only here: a prefix-stable template (most rows) never needs it
    before = render(messages[:i]) if before is None else before
    if not prompt.startswith(before):
        raise TemplateError(f"the chat template renders the turns before messages[{i}] differently with a generation "
                            f"prompt ({_difference(before, prompt, 'the prompt has')}), so the label mask cannot be "
                            "computed")
    if not upto.startswith(before):
        raise TemplateError(f"the chat template renders the turns before messages[{i}] differently once it follows "
                            f"({_difference(before, upto)}), so the label mask cannot be computed")
    header = prompt[len(before):]
    # Only whitespace may separate the turns before from the header; the header's own leading
    # whitespace is the end of that run (its first visible character starts the header either way)
    visible = header.lstrip()
    gap = len(upto) - len(upto[len(before):].lstrip())
    if not visible or not upto.startswith(visible, gap) or not upto[len(before):gap].endswith(header[:-len(visible)]):
        raise TemplateError(f"the chat template's generation prompt before messages[{i}] is not how the conversation "
                            f"continues ({_difference(prompt, upto)}), so the label mask cannot be computed")
    return gap + len(visible)


def _difference(part: str, whole: str, whole_name: str = "the whole conversation has", context: int = 24) -> str:
    """Where `part` stops being a prefix of `whole`, as a short excerpt of each (one line: repr)."""
    at = next((k for k, (a, b) in enumerate(zip(part, whole)) if a != b), min(len(part), len(whole)))
    begin = max(0, at - context)
    return f"...{part[begin:at + context]!r} where {whole_name} ...{whole[begin:at + context]!r}"


def _rendered(renderer: Renderer, messages: list[dict], train_on: TrainOn) -> tuple[str, list[tuple[int, int]]]:
    """The rendering and the spans `train_on` trains."""
    if train_on == "all":
        text = renderer(messages)
        return text, [(0, len(text))]
    text, spans = assistant_spans(renderer.tokenizer, messages, renderer)
    return text, spans[-1:] if train_on == "last_assistant" else spans


def pieces(text: str, spans: list[tuple[int, int]]) -> list[tuple[str, bool]]:
    """The text cut at every span edge, each piece marked trained or not (empty pieces dropped)."""
    out, position = [], 0
    for start, end in spans:
        out += [(text[position:start], False), (text[start:end], True)]
        position = end
    out.append((text[position:], False))
    return [(piece, trained) for piece, trained in out if piece]


def tokenize_many(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of many strings in one batched call, without special tokens added."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the Rust batch, without transformers' per-row conversion work
        # encode_batch_fast (tokenizers >= 0.21) skips the character offsets nothing here reads: the
        # same ids, in a third less time for a row's several pieces
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [encoding.ids for encoding in encode(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def encode_chats(tokenizer: Any, conversations: list[list[dict]], train_on: TrainOn = "assistant"
                 ) -> list[Sample]:
    """Encode a batch of conversations with one batched tokenizer call.

    `labels[t]` is the target at position t (models shift it), so `labels[0]` is always masked and
    `Sample.num_trainable` counts exactly the tokens the loss sees, packed or not.
    """
    renderer = Renderer(tokenizer)
    cut = [pieces(*_rendered(renderer, messages, train_on)) for messages in conversations]
    ids = iter(tokenize_many(tokenizer, [piece for row in cut for piece, _ in row]))
    samples = []
    for row in cut:
        input_ids: list[int] = []
        labels: list[int] = []
        for _, trained in row:
            piece = next(ids)
            input_ids += piece
            labels += piece if trained else [IGNORE_INDEX] * len(piece)
        if labels:
            labels[0] = IGNORE_INDEX  # nothing predicts a row's first token, so it is never trained
        samples.append(Sample(input_ids, labels))
    return samples
