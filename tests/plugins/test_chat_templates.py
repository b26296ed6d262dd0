"""The shipped chat templates: registered by name, render their family's layout, prefix-stable."""
from __future__ import annotations

from pathlib import Path

import pytest
from jinja2 import TemplateError

import plugins.chat_templates
from framework.registry import build_registry

FOLDER = Path(plugins.chat_templates.__file__).parent
NAMES = ("chatml", "gemma", "llama3", "tulu")
BOS, EOS = "<|endoftext|>", "<|im_end|>"

# Each family's generation prompt and the marker that ends an assistant turn (with the tokenizer's
# eos <|im_end|> as tulu's).
GENERATION_PROMPT = {"chatml": "<|im_start|>assistant\n", "tulu": "<|assistant|>\n",
                     "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
                     "gemma": "<start_of_turn>model\n"}
END_OF_TURN = {"chatml": "<|im_end|>", "tulu": EOS, "llama3": "<|eot_id|>", "gemma": "<end_of_turn>"}

SMALL = [{"role": "system", "content": "Be terse."},
         {"role": "user", "content": "Hi there!"},
         {"role": "assistant", "content": "Hello.\n"},
         {"role": "user", "content": " 2+2? "},
         {"role": "assistant", "content": "4"}]

LAYOUT = {  # SMALL rendered by hand from each family's documented layout, bos_token set
    "chatml": ("<|im_start|>system\nBe terse.<|im_end|>\n"
               "<|im_start|>user\nHi there!<|im_end|>\n"
               "<|im_start|>assistant\nHello.\n<|im_end|>\n"
               "<|im_start|>user\n 2+2? <|im_end|>\n"
               "<|im_start|>assistant\n4<|im_end|>\n"),
    "tulu": ("<|system|>\nBe terse.\n"
             "<|user|>\nHi there!\n"
             "<|assistant|>\nHello.\n<|im_end|>\n"
             "<|user|>\n 2+2? \n"
             "<|assistant|>\n4<|im_end|>"),  # open-instruct's: the last turn ends at eos, no newline
    "llama3": ("<|endoftext|>"
               "<|start_header_id|>system<|end_header_id|>\n\nBe terse.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"),
    "gemma": ("<|endoftext|>"
              "<start_of_turn>user\nBe terse.\n\nHi there!<end_of_turn>\n"
              "<start_of_turn>model\nHello.\n<end_of_turn>\n"
              "<start_of_turn>user\n 2+2? <end_of_turn>\n"
              "<start_of_turn>model\n4<end_of_turn>\n"),
}

TOOL = [{"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Calling."},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."}]
TOOL_TURN = {"chatml": "<|im_start|>tool\nsunny<|im_end|>\n", "tulu": "<|tool|>\nsunny\n",
             "llama3": "<|start_header_id|>ipython<|end_header_id|>\n\nsunny<|eot_id|>",
             "gemma": "<start_of_turn>user\nsunny<end_of_turn>\n"}


@pytest.fixture(scope="module")
def templates() -> dict[str, str]:
    return {name: entry.factory for name, entry in build_registry().entries["chat_templates"].items()}


@pytest.fixture
def render(tiny_tokenizer):
    """render(name, messages, gen=False, **special) with the quickstart tokenizer (eos <|im_end|>)."""
    sources = {name: (FOLDER / f"{name}.jinja").read_text() for name in NAMES}

    def _render(name: str, messages: list[dict], gen: bool = False, **special) -> str:
        special.setdefault("bos_token", BOS)
        return tiny_tokenizer.apply_chat_template(messages, chat_template=sources[name], tokenize=False,
                                                  add_generation_prompt=gen, **special)

    return _render


def conversations() -> list[tuple[str, list[dict]]]:
    """1 to 4 user/assistant turns, with and without a system message, and one with a tool turn."""
    out = []
    for turns in range(1, 5):
        body = []
        for i in range(turns):
            body += [{"role": "user", "content": f"Question {i}: what is {i} * 7?"},
                     {"role": "assistant", "content": f"It is {i * 7}.\n" if i % 2 else f" {i * 7}, ok"}]
        out += [(f"{turns}-turns", body),
                (f"{turns}-turns-system", [{"role": "system", "content": "Answer in digits."}] + body)]
    return out + [("tool", TOOL)]


def test_every_template_file_is_registered_by_its_name(templates):
    assert sorted(templates) == sorted(NAMES) == sorted(p.stem for p in FOLDER.glob("*.jinja"))
    entries = build_registry().entries["chat_templates"]
    for name in NAMES:
        assert templates[name] == (FOLDER / f"{name}.jinja").read_text()
        assert entries[name].plugin == "plugins.chat_templates"
        assert templates[name].lstrip().startswith("{#")  # each documents its layout up front


@pytest.mark.parametrize("name", NAMES)
def test_renders_the_documented_layout(render, name):
    assert render(name, SMALL) == LAYOUT[name]


@pytest.mark.parametrize("name", NAMES)
def test_the_generation_prompt_follows_the_conversation(render, name):
    assert render(name, SMALL[:4], gen=True) == render(name, SMALL[:4]) + GENERATION_PROMPT[name]
    assert render(name, SMALL, gen=True) == LAYOUT[name] + GENERATION_PROMPT[name]


def test_tulu_is_byte_for_byte_open_instructs_layout(render):
    """open-instruct's tulu template (1b695caf): every assistant turn ends with eos; a newline follows
    it only when another turn comes (so a row of exactly max_seq_length tokens is not cut)."""
    eos = "<|im_end|>"  # the quickstart tokenizer's
    assert render("tulu", SMALL[1:3]) == f"<|user|>\nHi there!\n<|assistant|>\nHello.\n{eos}"
    assert render("tulu", SMALL[1:4]) == f"<|user|>\nHi there!\n<|assistant|>\nHello.\n{eos}\n<|user|>\n 2+2? \n"
    assert render("tulu", SMALL[1:3], gen=True) == f"<|user|>\nHi there!\n<|assistant|>\nHello.\n{eos}<|assistant|>\n"


@pytest.mark.parametrize("name", NAMES)
def test_tool_results_render_as_documented(render, name):
    text = render(name, TOOL)
    assert TOOL_TURN[name] in text
    assert text.endswith("Sunny." + END_OF_TURN[name] + ("" if name in ("llama3", "tulu") else "\n"))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("label, messages", conversations(), ids=[c[0] for c in conversations()])
def test_prefix_stable_and_every_assistant_turn_ends_with_its_marker(render, name, label, messages):
    whole = render(name, messages)
    assert messages[0]["role"] != "assistant"  # transformers renders no empty conversation
    for i, message in enumerate(messages):
        if i == 0:
            assert whole.startswith(render(name, messages[:1]))
            continue
        before, upto = render(name, messages[:i]), render(name, messages[: i + 1])
        assert upto.startswith(before) and whole.startswith(upto)
        if message["role"] == "assistant":
            prompt = render(name, messages[:i], gen=True)
            assert prompt == before + GENERATION_PROMPT[name] and upto.startswith(prompt)
            turn = upto[len(prompt):].rstrip()
            assert turn.endswith(END_OF_TURN[name]) and turn[: -len(END_OF_TURN[name])].strip() == \
                message["content"].strip()


@pytest.mark.parametrize("name", ["llama3", "gemma"])
def test_bos_comes_first_only_when_the_tokenizer_has_one(render, tiny_tokenizer, name):
    assert render(name, SMALL).startswith(BOS)
    assert tiny_tokenizer.bos_token is None  # the quickstart tokenizer has none: nothing is emitted
    assert render(name, SMALL, bos_token=None) == LAYOUT[name][len(BOS):]
    source = (FOLDER / f"{name}.jinja").read_text()
    own = tiny_tokenizer.apply_chat_template(SMALL, chat_template=source, tokenize=False)
    assert own == LAYOUT[name][len(BOS):] and "None" not in own


@pytest.mark.parametrize("name", ["chatml", "tulu"])
def test_families_without_bos_never_emit_it(render, name):
    assert BOS not in render(name, SMALL)
    assert "None" not in render(name, SMALL, bos_token=None)


def test_a_bos_from_the_tokenizer_itself_is_emitted(repo):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(repo / "recipes/quickstart/tokenizer", bos_token=BOS)
    for name in ["llama3", "gemma"]:
        text = tokenizer.apply_chat_template(SMALL, chat_template=(FOLDER / f"{name}.jinja").read_text(),
                                             tokenize=False)
        assert text == LAYOUT[name]


def test_gemma_folds_the_system_message_into_the_first_user_turn(render):
    text = render("gemma", SMALL[:2], bos_token=None)
    assert text == "<start_of_turn>user\nBe terse.\n\nHi there!<end_of_turn>\n"
    assert render("gemma", SMALL[:1]) == BOS  # a lone system message waits for its user turn


@pytest.mark.parametrize("messages, match", [
    (SMALL[1:3] + SMALL[:1], "only come first"),
    ([SMALL[0], SMALL[2]], "followed by a user message"),
])
def test_gemma_refuses_a_system_message_it_cannot_place(render, messages, match):
    with pytest.raises(TemplateError, match=match):
        render("gemma", messages)


def test_gemma_refuses_a_generation_prompt_after_a_lone_system_message(render):
    with pytest.raises(TemplateError, match="followed by a user message"):
        render("gemma", SMALL[:1], gen=True)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_roles_and_non_text_content_are_refused(render, name):
    with pytest.raises(TemplateError, match="unknown role"):
        render(name, [{"role": "narrator", "content": "Once upon a time."}])
    with pytest.raises(TemplateError, match="content must be a string"):
        render(name, [{"role": "user", "content": [{"type": "text", "text": "hi"}]}])


@pytest.mark.parametrize("name", NAMES)
def test_missing_content_renders_empty_not_none(render, name):
    text = render(name, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}])
    assert "None" not in text and text.rstrip().endswith(END_OF_TURN[name])


def test_tulu_needs_an_eos_token_to_end_assistant_turns(render):
    with pytest.raises(TemplateError, match="eos_token"):
        render("tulu", SMALL, eos_token=None)
    assert render("tulu", SMALL[:2], eos_token=None) == "<|system|>\nBe terse.\n<|user|>\nHi there!\n"
