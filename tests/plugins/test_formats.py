"""plugins.formats: messages, prompt_completion, alpaca, text and ShareGPT rows; encode_text for plain text."""
from __future__ import annotations

import pytest

from framework.data.tokenize import encode_text
from framework.types import IGNORE_INDEX
from plugins.formats import alpaca, messages, prompt_completion, seqtune_register_dataset_formats, sharegpt, text

USER_HI = {"role": "user", "content": "hi"}
ASSISTANT_YO = {"role": "assistant", "content": "yo"}


def test_every_builtin_format_is_registered():
    assert seqtune_register_dataset_formats() == {"messages": messages, "prompt_completion": prompt_completion,
                                                  "alpaca": alpaca, "text": text, "sharegpt": sharegpt}


# -- messages ------------------------------------------------------------------------------------

def test_messages_returns_role_and_content_only():
    row = {"messages": [{"role": "system", "content": "be brief"},
                        {"role": "user", "content": "hi", "name": "bob"},
                        {"role": "assistant", "content": "", "extra": 1},
                        {"role": "tool", "content": "42"}],
           "source": "x"}
    assert messages(row) == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                             {"role": "assistant", "content": ""}, {"role": "tool", "content": "42"}]


@pytest.mark.parametrize("row", [{}, {"messages": "hi"}, {"messages": None}, {"messages": {"role": "user"}}],
                         ids=["missing", "string", "null", "mapping"])
def test_messages_needs_a_list(row):
    with pytest.raises(ValueError, match=r"needs a 'messages' list of \{role, content\} messages"):
        messages(row)


def test_an_empty_message_list_is_returned_for_the_pipeline_to_drop():
    assert messages({"messages": []}) == []


def test_messages_unknown_role_lists_the_roles():
    row = {"messages": [USER_HI, {"role": "robot", "content": "beep"}, ASSISTANT_YO]}
    with pytest.raises(ValueError) as info:
        messages(row)
    assert str(info.value) == ("messages[1] has unknown role 'robot' "
                               "(expected one of: system, user, assistant, tool)")


def test_messages_missing_role():
    with pytest.raises(ValueError, match=r"messages\[0\] has unknown role None"):
        messages({"messages": [{"content": "hi"}, ASSISTANT_YO]})


@pytest.mark.parametrize("content", [None, 5, ["a", "b"], {"text": "x"}])
def test_messages_content_must_be_a_string(content):
    row = {"messages": [USER_HI, {"role": "assistant", "content": content}]}
    with pytest.raises(ValueError, match=r"messages\[1\] needs a string 'content'"):
        messages(row)


def test_messages_entries_must_be_mappings():
    with pytest.raises(ValueError, match=r"messages\[0\] needs a string 'content'"):
        messages({"messages": ["user: hi", ASSISTANT_YO]})


def test_messages_without_an_assistant_turn_are_returned_for_the_pipeline_to_drop():
    assert messages({"messages": [{"role": "system", "content": "s"}, USER_HI]}) == [
        {"role": "system", "content": "s"}, USER_HI]


# -- prompt_completion ----------------------------------------------------------------------------

def test_prompt_completion_strings_become_a_user_and_an_assistant_turn():
    assert prompt_completion({"prompt": "2+2?", "completion": "4", "id": 3}) == [
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


def test_prompt_completion_conversational_lists_are_joined():
    row = {"prompt": [{"role": "system", "content": "s"}, USER_HI],
           "completion": [{"role": "assistant", "content": "yo", "weight": 1}]}
    assert prompt_completion(row) == [{"role": "system", "content": "s"}, USER_HI, ASSISTANT_YO]


def test_conversational_prompt_completion_is_checked_like_messages():
    again = {"role": "user", "content": "again"}
    assert prompt_completion({"prompt": [USER_HI], "completion": [again]}) == [USER_HI, again]
    assert prompt_completion({"prompt": [], "completion": []}) == []
    with pytest.raises(ValueError, match=r"prompt \+ completion\[1\] has unknown role 'bot'"):
        prompt_completion({"prompt": [USER_HI], "completion": [{"role": "bot", "content": "x"}]})


@pytest.mark.parametrize("row, column", [({"completion": "4"}, "prompt"), ({"prompt": "", "completion": "4"}, "prompt"),
                                         ({"prompt": "q"}, "completion"), ({"prompt": "q", "completion": 4}, "completion"),
                                         ({"prompt": [USER_HI], "completion": "yo"}, "prompt")])
def test_prompt_completion_needs_both_strings(row, column):
    with pytest.raises(ValueError, match=f"needs a non-empty string column '{column}'"):
        prompt_completion(row)


# -- alpaca -----------------------------------------------------------------------------------------

def test_alpaca_without_input():
    for row in ({"instruction": "Say hi", "output": "hi"}, {"instruction": "Say hi", "input": "", "output": "hi"},
                {"instruction": "Say hi", "input": None, "output": "hi"}):
        assert alpaca(row) == [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]


def test_alpaca_with_input_joins_it_to_the_instruction():
    assert alpaca({"instruction": "Add", "input": "2 and 3", "output": "5"}) == [
        {"role": "user", "content": "Add\n\n2 and 3"}, {"role": "assistant", "content": "5"}]


def test_alpaca_bad_rows():
    with pytest.raises(ValueError, match="needs a non-empty string column 'instruction'"):
        alpaca({"output": "5"})
    with pytest.raises(ValueError, match="needs a non-empty string column 'output'"):
        alpaca({"instruction": "Add", "output": ""})
    with pytest.raises(ValueError, match="column 'input' must be a string"):
        alpaca({"instruction": "Add", "input": ["2", "3"], "output": "5"})


# -- text -------------------------------------------------------------------------------------------

def test_text_returns_the_string_itself():
    assert text({"text": "Once upon a time.", "meta": 1}) == "Once upon a time."


@pytest.mark.parametrize("row", [{}, {"text": None}, {"text": ["a"]}, {"text": 5}])
def test_text_needs_a_string(row):
    with pytest.raises(ValueError, match="needs a string column 'text'"):
        text(row)


def test_an_empty_text_is_returned_for_the_pipeline_to_drop():
    assert text({"text": ""}) == ""


def test_encode_text_trains_every_token_after_the_first_and_appends_eos(tiny_tokenizer):
    sample = encode_text(tiny_tokenizer, "the quick brown fox")
    plain = tiny_tokenizer("the quick brown fox", add_special_tokens=False)["input_ids"]
    assert len(plain) > 2
    assert sample.input_ids == plain + [tiny_tokenizer.eos_token_id]
    assert sample.labels == [IGNORE_INDEX] + sample.input_ids[1:]
    assert sample.num_trainable == len(plain)
    assert tiny_tokenizer.convert_ids_to_tokens(sample.input_ids[-1]) == "<|im_end|>"


# -- sharegpt ---------------------------------------------------------------------------------------

def turn(who: str, value) -> dict:
    return {"from": who, "value": value}


def test_sharegpt_maps_the_usual_role_names():
    row = {"conversations": [turn("system", "s"), turn("human", "a"), turn("gpt", "b"), turn("user", "c"),
                             turn("model", "d"), turn("function_call", '{"name": "f"}'), turn("observation", "42"),
                             turn("assistant", "e"), turn("tool", "43")], "id": 1}
    assert [(m["role"], m["content"]) for m in sharegpt(row)] == [
        ("system", "s"), ("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"),
        ("assistant", '{"name": "f"}'), ("tool", "42"), ("assistant", "e"), ("tool", "43")]


def test_sharegpt_turns_keep_only_role_and_content():
    row = {"conversations": [{"from": "human", "value": "a", "weight": 0}, {"from": "gpt", "value": "", "x": 1}]}
    assert sharegpt(row) == [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]


def test_sharegpt_options_name_other_roles_and_keys():
    row = {"conversations": [{"speaker": "person", "text": "a"}, {"speaker": "human", "text": "b"},
                             {"speaker": "gpt", "text": "c"}]}
    assert sharegpt(row, roles={"person": "system", "gpt": "user"}, role_key="speaker", content_key="text") == [
        {"role": "system", "content": "a"}, {"role": "user", "content": "b"}, {"role": "user", "content": "c"}]


def test_sharegpt_unknown_role_lists_the_known_ones_and_the_option():
    with pytest.raises(ValueError) as info:
        sharegpt({"conversations": [turn("human", "a"), turn("bot", "b")]}, roles={"person": "user"})
    assert str(info.value) == (
        "conversations[1] has unknown role 'bot' in 'from' (known: assistant, function_call, gpt, human, model, "
        "observation, person, system, tool, user); map others with format: {name: sharegpt, roles: {<name>: "
        "system|user|assistant|tool}}")


@pytest.mark.parametrize("row, message", [({}, r"needs a 'conversations' list of \{from, value\} turns"),
                                          ({"conversations": "hi"}, "needs a 'conversations' list"),
                                          ({"conversations": [turn("human", 5)]}, r"conversations\[0\] needs a string 'value'"),
                                          ({"conversations": ["human: hi"]}, r"conversations\[0\] needs a string 'value'"),
                                          ({"conversations": [{"value": "hi"}]}, r"conversations\[0\] has unknown role None"),
                                          ({"conversations": [turn(["human"], "hi")]}, r"unknown role \['human'\]")])
def test_sharegpt_malformed_rows(row, message):
    with pytest.raises(ValueError, match=message):
        sharegpt(row)


def test_an_empty_conversation_is_returned_for_the_pipeline_to_drop():
    assert sharegpt({"conversations": []}) == []


def test_every_builtin_format_declares_the_columns_it_needs():
    declared = {name: factory.columns for name, factory in seqtune_register_dataset_formats().items()}
    assert declared == {"messages": ("messages",), "prompt_completion": ("prompt", "completion"),
                        "alpaca": ("instruction", "output"), "text": ("text",), "sharegpt": ("conversations",)}
