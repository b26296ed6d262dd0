"""Rows with nothing to train: dropped and counted by cause (`data.untrainable: drop`, the default),
or the first one an error naming its file and line (`data.untrainable: error`).

The causes: no assistant turn (with train_on assistant or last_assistant), empty after the format
(an empty message list, an empty text), and every trainable token cut by truncation. Expected
rows come from `encode_chat` of the good rows, never from the pipeline under test.
"""
from __future__ import annotations

import json

import pytest

from seqtune_testing import encode_chat
from framework.data.tokenize import encode_text
from framework.errors import UserError

NO_ANSWER = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello?"}]}
EMPTY = {"messages": []}
LONG_PROMPT = {"messages": [{"role": "user", "content": "a very long question " * 12},
                            {"role": "assistant", "content": "short"}]}


def write(path, rows: list) -> None:
    """JSON Lines; a str row is written as it is ("" is a blank line)."""
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))


@pytest.fixture
def mixed(tmp_path, kit):
    """Good chats and text mixed with rows that have nothing to train: (mixture entries, good rows)."""
    good = [kit.chat(f"question {i}", f"answer {i}") for i in range(6)]
    chats = [good[0], NO_ANSWER, good[1], EMPTY, good[2], "", NO_ANSWER, good[3], LONG_PROMPT, good[4], good[5]]
    write(tmp_path / "chats.jsonl", chats)
    write(tmp_path / "prose.jsonl", [{"text": "a document"}, {"text": ""}, {"text": "another one"}])
    mixture = [{"source": tmp_path / "chats.jsonl", "fraction": 1.0},
               {"source": tmp_path / "prose.jsonl", "fraction": 1.0, "format": "text"}]
    return mixture, good


def test_untrainable_rows_are_dropped_and_counted_by_cause(mixed, write_recipe, kit, tiny_tokenizer):
    mixture, good = mixed
    data = kit.prepare(write_recipe(mixture, max_seq_length=48))
    long = encode_chat(tiny_tokenizer, LONG_PROMPT["messages"])
    assert long.labels[:49].count(-100) == 49  # its answer starts after token 48: right cuts all of it
    report = data.report
    assert report.dropped == {"empty": 2, "no_assistant_turn": 2, "no_trainable_token": 0, "cut_by_truncation": 1}
    assert report.rows_in == 13 and report.rows_dropped == 5 and report.rows_kept == len(data.dataset) == 8
    expected = [encode_chat(tiny_tokenizer, row["messages"]) for row in good]
    expected += [encode_text(tiny_tokenizer, text) for text in ("a document", "another one")]
    assert sorted(kit.rows_of(data)) == sorted((tuple(s.input_ids), tuple(s.labels)) for s in expected)
    assert "5 dropped: 2 empty, 2 no assistant turn, 1 cut by truncation)" in report.summary()
    assert json.loads(json.dumps(vars(report)))["dropped"] == report.dropped


def test_rows_dropped_before_encoding_cost_no_tokens(tmp_path, write_recipe, kit, tiny_tokenizer):
    good = kit.conversations(3)
    write(tmp_path / "chats.jsonl", [good[0], NO_ANSWER, EMPTY, good[1], good[2]])
    data = kit.prepare(write_recipe([{"source": tmp_path / "chats.jsonl", "fraction": 1.0}], max_seq_length=4096))
    lengths = sorted(len(encode_chat(tiny_tokenizer, row["messages"]).input_ids) for row in good)
    assert data.report.tokens_in == sum(lengths) and data.report.tokens_lost == 0
    assert data.report.lengths_before["max"] == lengths[-1] and data.report.lengths_before["p50"] == lengths[1]


@pytest.mark.parametrize("train_on, dropped", [("assistant", 2), ("last_assistant", 2), ("all", 0)])
def test_no_assistant_turn_depends_on_what_is_trained(tmp_path, write_recipe, kit, train_on, dropped):
    write(tmp_path / "chats.jsonl", [kit.chat("q", "a"), NO_ANSWER, NO_ANSWER])
    data = kit.prepare(write_recipe([{"source": tmp_path / "chats.jsonl", "fraction": 1.0}], train_on=train_on))
    assert data.report.dropped["no_assistant_turn"] == dropped and len(data.dataset) == 3 - dropped


@pytest.mark.parametrize("rows, fmt, reason", [
    ([{"text": "fine"}, "", {"text": ""}], "text", "3: the row is empty after its format"),
    ([None, None, "", EMPTY], "messages", "4: the row is empty after its format"),
    ([None, "", NO_ANSWER, None], "messages", "3: has no assistant turn to train on"),
    ([None, "", "", None, LONG_PROMPT], "messages", "5: has "),
])
def test_untrainable_error_names_the_first_such_row_and_its_cause(tmp_path, write_recipe, kit, rows, fmt, reason):
    write(tmp_path / "rows.jsonl", [row if row is not None else kit.chat("q", "a") for row in rows])
    recipe = write_recipe([{"source": tmp_path / "rows.jsonl", "fraction": 1.0, "format": fmt}],
                          untrainable="error", max_seq_length=48)
    with pytest.raises(UserError) as info:
        kit.prepare(recipe)
    (line,) = info.value.problems
    assert line.startswith(f"{tmp_path / 'rows.jsonl'}:{reason}"), line
    assert line.endswith("(data.untrainable: error; 'drop' drops and counts such rows)")


def test_cut_by_truncation_error_says_what_was_cut(tmp_path, write_recipe, kit, tiny_tokenizer):
    write(tmp_path / "rows.jsonl", [kit.chat("q", "a"), LONG_PROMPT])
    with pytest.raises(UserError) as info:
        kit.prepare(write_recipe([{"source": tmp_path / "rows.jsonl", "fraction": 1.0}], untrainable="error",
                                 max_seq_length=48, truncation="right"))
    tokens = len(encode_chat(tiny_tokenizer, LONG_PROMPT["messages"]).input_ids)
    assert info.value.problems[0].startswith(
        f"{tmp_path / 'rows.jsonl'}:2: has {tokens} tokens and truncation to max_seq_length 48 leaves none of them "
        "to train")


def test_untrainable_error_with_only_trainable_rows_is_the_same_data(tmp_path, write_recipe, kit):
    write(tmp_path / "rows.jsonl", kit.conversations(8))
    mixture = [{"source": tmp_path / "rows.jsonl", "fraction": 1.0}]
    dropping = kit.prepare(write_recipe(mixture))
    strict = kit.prepare(write_recipe(mixture, untrainable="error", name="strict.yaml"))
    assert kit.rows_of(strict) == kit.rows_of(dropping) and strict.report == dropping.report


def test_switching_to_error_is_not_served_from_the_dropping_cache(tmp_path, write_recipe, kit):
    write(tmp_path / "rows.jsonl", [kit.chat("q", "a"), NO_ANSWER])
    mixture = [{"source": tmp_path / "rows.jsonl", "fraction": 1.0}]
    assert kit.prepare(write_recipe(mixture)).report.dropped["no_assistant_turn"] == 1
    assert kit.prepare(write_recipe(mixture, name="again.yaml")).from_cache
    with pytest.raises(UserError, match=r":2: has no assistant turn to train on"):
        kit.prepare(write_recipe(mixture, untrainable="error", name="strict.yaml"))


def test_when_every_row_is_dropped_the_error_gives_the_causes(tmp_path, write_recipe, kit):
    write(tmp_path / "rows.jsonl", [NO_ANSWER, EMPTY, NO_ANSWER])
    with pytest.raises(UserError) as info:
        kit.prepare(write_recipe([{"source": tmp_path / "rows.jsonl", "fraction": 1.0}]))
    (line,) = info.value.problems
    assert line.startswith("data: no row is left to train on: 3 rows -> 0 kept (0 truncated, 3 dropped: "
                           "1 empty, 2 no assistant turn)")
    assert "give the rows an assistant turn, or set data.train_on: all" in line


def test_the_plan_sample_drops_untrainable_rows(mixed, write_recipe, kit, tiny_tokenizer):
    from framework.data.pipeline import untruncated_sample
    from framework.model.tokenizer import load_tokenizer
    from framework.registry import bind_parts

    mixture, good = mixed
    loaded = write_recipe(mixture, untrainable="error")
    parts = bind_parts(loaded)
    tokenizer = load_tokenizer(loaded.recipe, parts.registry.entries["chat_templates"])
    samples = untruncated_sample(loaded.recipe, parts.loaders, parts.formats, tokenizer, 100)
    expected = [encode_chat(tiny_tokenizer, row["messages"]) for row in [*good, LONG_PROMPT]]
    expected += [encode_text(tiny_tokenizer, text) for text in ("a document", "another one")]
    assert sorted((s.input_ids, s.labels) for s in samples) == sorted((s.input_ids, s.labels) for s in expected)
