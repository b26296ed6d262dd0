"""plugins.datasets: the `json` loader (.json and .jsonl files) and the `messages` format."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from framework.errors import UserError
from plugins.datasets import load_json, messages

ROW_A = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
ROW_B = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "id": 7}


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load_error(source: str, split: str = "train") -> str:
    with pytest.raises(UserError) as info:
        load_json(source, split)
    (line,) = info.value.problems
    return line


# -- .jsonl ------------------------------------------------------------------------------------

def test_jsonl_gives_one_row_per_line_skipping_blank_lines(here):
    (here / "rows.jsonl").write_text(json.dumps(ROW_A) + "\n\n" + json.dumps(ROW_B) + "\n   \n")
    assert list(load_json("rows.jsonl", "train")) == [ROW_A, ROW_B]


def test_jsonl_ignores_the_split(here):
    (here / "rows.jsonl").write_text(json.dumps(ROW_A) + "\n")
    assert list(load_json("rows.jsonl", "test")) == [ROW_A]


def test_malformed_jsonl_line_names_file_and_line_number(here):
    (here / "rows.jsonl").write_text(json.dumps(ROW_A) + "\n" + json.dumps(ROW_B) + "\n"
                                     + '{"messages": [oops]}\n' + json.dumps(ROW_A) + "\n")
    line = load_error("rows.jsonl")
    assert line.startswith("rows.jsonl:3: invalid JSON line")


def test_blank_lines_still_count_towards_line_numbers(here):
    (here / "rows.jsonl").write_text(json.dumps(ROW_A) + "\n\n{not json\n")
    assert load_error("rows.jsonl").startswith("rows.jsonl:3: ")


def test_non_object_jsonl_line_is_an_error(here):
    (here / "rows.jsonl").write_text(json.dumps(ROW_A) + "\n" + "[1, 2]\n")
    line = load_error("rows.jsonl")
    assert line.startswith("rows.jsonl:2: ")
    assert "expected a JSON object per line, got list" in line


def test_missing_file_is_an_error(here):
    assert load_error("nowhere.jsonl") == "nowhere.jsonl: no such file"
    (here / "folder.json").mkdir()
    assert load_error("folder.json") == "folder.json: no such file"


# -- .json -------------------------------------------------------------------------------------

def test_json_list_of_rows(here):
    (here / "rows.json").write_text(json.dumps([ROW_A, ROW_B]))
    assert list(load_json("rows.json", "train")) == [ROW_A, ROW_B]


def test_json_split_dict_picks_the_split(here):
    (here / "splits.json").write_text(json.dumps({"train": [ROW_A], "validation": [ROW_B, ROW_A]}))
    assert list(load_json("splits.json", "train")) == [ROW_A]
    assert list(load_json("splits.json", "validation")) == [ROW_B, ROW_A]


def test_json_missing_split_lists_the_splits(here):
    (here / "splits.json").write_text(json.dumps({"train": [ROW_A], "validation": [ROW_B]}))
    line = load_error("splits.json", "test")
    assert line == "splits.json: has no split 'test' (splits: train, validation)"


def test_invalid_json_names_file_and_line(here):
    (here / "rows.json").write_text('[\n  {"messages": []},\n  {oops}\n]\n')
    line = load_error("rows.json")
    assert line.startswith("rows.json:3: invalid JSON")


def test_json_that_is_not_rows_is_an_error(here):
    (here / "rows.json").write_text("42")
    assert load_error("rows.json") == "rows.json: expected a list of rows"
    (here / "splits.json").write_text(json.dumps({"train": "not rows"}))
    assert load_error("splits.json") == "splits.json: expected a list of rows"


def test_json_rows_must_be_objects_like_jsonl_lines(here):
    """A loader returns row dicts; a .json list holding a non-object is a UserError naming the file."""
    (here / "rows.json").write_text(json.dumps([ROW_A, "just text", 5]))
    with pytest.raises(UserError) as info:
        load_json("rows.json", "train")
    assert "rows.json" in str(info.value)


# -- messages format ---------------------------------------------------------------------------

def test_messages_returns_role_and_content_only():
    row = {"messages": [{"role": "system", "content": "be brief"},
                        {"role": "user", "content": "hi", "name": "bob"},
                        {"role": "assistant", "content": "", "extra": 1},
                        {"role": "tool", "content": "42"}],
           "source": "x"}
    assert messages(row) == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                             {"role": "assistant", "content": ""}, {"role": "tool", "content": "42"}]


@pytest.mark.parametrize("row", [{"messages": []}, {}, {"messages": "hi"}, {"messages": None}],
                         ids=["empty", "missing", "string", "null"])
def test_messages_needs_a_non_empty_list(row):
    with pytest.raises(ValueError, match="non-empty 'messages' list"):
        messages(row)


def test_messages_unknown_role():
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}
    with pytest.raises(ValueError) as info:
        messages(row)
    text = str(info.value)
    assert "messages[1]" in text and "'robot'" in text
    assert "system, user, assistant, tool" in text


def test_messages_missing_role():
    with pytest.raises(ValueError, match=r"messages\[0\] has unknown role None"):
        messages({"messages": [{"content": "hi"}]})


@pytest.mark.parametrize("content", [None, 5, ["a", "b"], {"text": "x"}])
def test_messages_content_must_be_a_string(content):
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": content}]}
    with pytest.raises(ValueError, match=r"messages\[1\] needs a string 'content'"):
        messages(row)


def test_messages_entries_must_be_mappings():
    with pytest.raises(ValueError, match=r"messages\[0\] needs a string 'content'"):
        messages({"messages": ["user: hi"]})
