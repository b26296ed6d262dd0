"""The `sharegpt` format through the real pipeline: {from, value} turns become the chat the template
renders, only the model's turns are trained, and its options (role names, turn keys) come from the
recipe like any plugin's."""
from __future__ import annotations

import pytest

from framework.errors import UserError
from seqtune_testing import encode_chat, mixture_rows, trained_runs

SYSTEM = {"from": "system", "value": "Answer in one word."}


def sharegpt_rows(n: int) -> list[dict]:
    """Multi-turn ShareGPT conversations, with a system turn in every other one."""
    rows = []
    for i in range(n):
        turns = [SYSTEM] if i % 2 else []
        for k in range(1 + i % 2):
            turns += [{"from": "human", "value": f"question {i}.{k}"}, {"from": "gpt", "value": f"answer {i}.{k}"}]
        rows.append({"conversations": turns, "id": i})
    return rows


def as_messages(row: dict) -> list[dict]:
    names = {"system": "system", "human": "user", "gpt": "assistant"}
    return [{"role": names[turn["from"]], "content": turn["value"]} for turn in row["conversations"]]


def test_sharegpt_rows_train_only_the_gpt_turns(tmp_path, write_recipe, kit, tiny_tokenizer):
    rows = sharegpt_rows(6)
    source = kit.write_jsonl(tmp_path / "sharegpt.jsonl", rows)
    data = kit.prepare(write_recipe([{"source": source, "fraction": 1.0, "format": "sharegpt"}]))
    expected = [encode_chat(tiny_tokenizer, as_messages(row)) for row in rows]
    assert sorted(kit.rows_of(data)) == sorted((tuple(s.input_ids), tuple(s.labels)) for s in expected)
    for ids, labels in kit.rows_of(data):
        trained = [tiny_tokenizer.decode(ids[a:b]) for a, b in trained_runs(labels)]
        assert trained and all(text.startswith("answer ") and text.endswith(kit.IM_END) for text in trained)
        assert "question" in tiny_tokenizer.decode(ids) and "<|im_start|>user" in tiny_tokenizer.decode(ids)
    assert sum(len(trained_runs(labels)) for _, labels in kit.rows_of(data)) == 9  # every gpt turn


def test_a_bad_role_names_its_file_and_line(tmp_path, write_recipe, kit):
    source = tmp_path / "sharegpt.jsonl"
    good = kit.write_jsonl(tmp_path / "good.jsonl", sharegpt_rows(1)).read_text()
    source.write_text(good + "\n" + '{"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]}\n')
    with pytest.raises(UserError) as info:
        kit.prepare(write_recipe([{"source": source, "fraction": 1.0, "format": "sharegpt"}]))
    (line,) = info.value.problems
    assert line.startswith(f"{source}:3: conversations[1] has unknown role 'bot' in 'from' (known: assistant, ")
    assert line.endswith("map others with format: {name: sharegpt, roles: {<name>: system|user|assistant|tool}}")


def test_role_names_and_turn_keys_are_options(tmp_path, write_recipe, kit, tiny_tokenizer):
    rows = [{"dialog": [{"speaker": "person", "text": "hi"}, {"speaker": "bot", "text": "yo"}]}]
    source = kit.write_jsonl(tmp_path / "custom.jsonl", rows)

    def prepared(roles: dict):
        entry = {"source": source, "fraction": 1.0, "columns": {"conversations": "dialog"},
                 "format": {"name": "sharegpt", "roles": roles, "role_key": "speaker", "content_key": "text"}}
        return kit.prepare(write_recipe([entry]))

    data = prepared({"person": "user", "bot": "assistant"})
    assert mixture_rows(data)[0]["messages"] == [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "yo"}]
    ((ids, labels),) = kit.rows_of(data)
    assert [tiny_tokenizer.decode(ids[a:b]) for a, b in trained_runs(labels)] == ["yo" + kit.IM_END]
    # other options are other rows: the cache is keyed by them too
    ((ids, labels),) = kit.rows_of(prepared({"person": "assistant", "bot": "user"}))
    assert [tiny_tokenizer.decode(ids[a:b]) for a, b in trained_runs(labels)] == ["hi" + kit.IM_END]
