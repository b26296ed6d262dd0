"""Bad data through the real pipeline (`prepare_data`), from bytes written to real files.

Each mistake is one `UserError` line naming the file and its physical line (blank lines counted),
or the row index where a file has no lines; a row that is only untrainable is dropped and counted
by cause, or, with `data.untrainable: error`, the first one is an error naming it.
"""
from __future__ import annotations

import json

import datasets
import pytest

from framework.errors import UserError
from seqtune_testing import mixture_rows

GOOD = {"messages": [{"role": "user", "content": "Reverse: c a t"}, {"role": "assistant", "content": "t a c"}]}
NO_ANSWER = {"messages": [{"role": "user", "content": "a question nobody answers"}]}
SYSTEM_IN_THE_MIDDLE = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                                     {"role": "system", "content": "s"}, {"role": "user", "content": "q2"},
                                     {"role": "assistant", "content": "a2"}]}
LONG = {"messages": [{"role": "user", "content": "a long question " * 20}, {"role": "assistant", "content": "a"}]}


def line_of(row: dict | str) -> bytes:
    return (row if isinstance(row, str) else json.dumps(row)).encode() + b"\n"


def jsonl(*rows: dict | str) -> bytes:
    """JSON Lines bytes; a str is written as it is ("" is a blank line)."""
    return b"".join(line_of(row) for row in rows)


def the_error(kit, write_recipe, path, data: bytes, source=None, **recipe) -> str:
    """The one error line of preparing `source` (default: `path`) once `data` is written to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    with pytest.raises(UserError) as info:
        kit.prepare(write_recipe([{"source": source or path, "fraction": 1.0}], **recipe))
    (line,) = info.value.problems
    assert "\n" not in line and "Traceback" not in line
    return line


DEEP = b"[" * 100_000 + b"]" * 100_000
BAD_FILES = {  # name: (file name, bytes, what the error says after the file name)
    "invalid_utf8_jsonl": ("rows.jsonl", jsonl(GOOD, "") + b'{"messages": "caf\xe9"}\n',
                           ":3: not valid UTF-8 (byte 0xe9 at byte 18 of the line); save the file as UTF-8"),
    "lone_high_surrogate": ("rows.jsonl",
                            jsonl(GOOD, "", "", '{"messages": [{"role": "user", "content": "a\\ud800"}]}'),
                            ":4: holds \\ud800, half of a UTF-16 surrogate pair, not a character; fix or remove it"),
    "lone_low_surrogate": ("rows.jsonl", jsonl(GOOD, '{"messages": [{"role": "user", "content": "x\\uDC00y"}]}'),
                           ":2: holds \\udc00, half of a UTF-16 surrogate pair"),
    "deep_nesting_jsonl": ("rows.jsonl", jsonl(GOOD, "") + DEEP + b"\n" + jsonl(GOOD),
                           ":3: invalid JSON line: nested deeper than the parser's limit"),
    # read natively, a huge number is just a number; the row then lacks what its format needs
    "huge_integer": ("rows.jsonl", jsonl(GOOD) + b'{"id": ' + b"9" * 5000 + b"}\n",
                     ":2: needs a 'messages' list"),
    "empty_jsonl": ("rows.jsonl", b"", ": the file holds no rows"),
    "blank_jsonl": ("rows.jsonl", b"\n  \n\r\n", ": the file holds no rows"),
    "invalid_utf8_json": ("rows.json", b"[\n" + json.dumps(GOOD).encode() + b",\n\n" + b'{"text": "\xff"}]',
                          ":4: not valid UTF-8 (byte 0xff at byte 11 of the line)"),
    "lone_surrogate_json": ("rows.json", b'[' + json.dumps(GOOD).encode() + b', {"messages": [{"role": "user", '
                            b'"content": "ok"}, {"role": "assistant", "content": "\\ud83d"}]}]',
                            ": row 2: holds \\ud83d, half of a UTF-16 surrogate pair"),
    "deep_nesting_json": ("rows.json", b"[\n" + json.dumps(GOOD).encode() + b",\n\n" + DEEP + b"\n]",
                          ":4: invalid JSON: nested deeper than the parser's limit"),
    "empty_json": ("rows.json", b"  \n", ": the file holds no rows"),
    "empty_json_list": ("rows.json", b"[]", ": the file holds no rows"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_bytes_are_one_line_naming_the_file_and_line(tmp_path, write_recipe, kit, case):
    name, data, expected = BAD_FILES[case]
    line = the_error(kit, write_recipe, tmp_path / name, data)
    assert line.startswith(f"{tmp_path / name}{expected}"), line
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("complete.json"))


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.json"])
def test_a_utf8_bom_is_accepted(tmp_path, write_recipe, kit, name):
    rows = [GOOD, {"messages": [{"role": "user", "content": "é?"}, {"role": "assistant", "content": "ü"}]}]
    text = jsonl(*rows) if name.endswith(".jsonl") else json.dumps(rows).encode()
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / name).write_bytes(text)
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text)
    with_bom = kit.prepare(write_recipe([{"source": tmp_path / name, "fraction": 1.0}]))
    without = kit.prepare(write_recipe([{"source": tmp_path / "plain" / name, "fraction": 1.0}], name="plain.yaml"))
    assert mixture_rows(with_bom)["messages"] == mixture_rows(without)["messages"]
    assert sorted(kit.rows_of(with_bom)) == sorted(kit.rows_of(without)) and len(with_bom.dataset) == 2


def test_a_whole_surrogate_pair_is_one_character_and_unread_columns_are_not_checked(tmp_path, write_recipe, kit):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(jsonl('{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}, '
                           '{"role": "assistant", "content": "\\uD83D\\uDE00 \\ud7ff"}], "unused": "\\ud800"}'))
    data = kit.prepare(write_recipe([{"source": path, "fraction": 1.0}]))
    assert [m["content"] for m in mixture_rows(data)[0]["messages"]] == ["😀", "😀 \ud7ff"]


# -- errors found after loading name the file and physical line ----------------------------------

def test_a_format_error_after_blank_lines_names_the_physical_line(tmp_path, write_recipe, kit):
    data = jsonl(GOOD, "", GOOD, "", "", "  ", {"messages": [{"role": "robot", "content": "beep"}]}, GOOD)
    line = the_error(kit, write_recipe, tmp_path / "rows.jsonl", data)
    assert line.startswith(f"{tmp_path / 'rows.jsonl'}:7: messages[0] has unknown role 'robot'"), line


def test_a_missing_column_names_the_physical_line(tmp_path, write_recipe, kit):
    data = jsonl(GOOD, "", {"prompt": "q", "completion": "a"})
    line = the_error(kit, write_recipe, tmp_path / "rows.jsonl", data)
    assert line == f"{tmp_path / 'rows.jsonl'}:3: needs a 'messages' list of {{role, content}} messages"


def test_a_folder_names_the_file_the_bad_row_is_in(tmp_path, write_recipe, kit):
    folder = tmp_path / "chats"
    (folder / "b").mkdir(parents=True)
    (folder / "a.jsonl").write_bytes(jsonl(GOOD, GOOD, GOOD))
    (folder / "a2.json").write_text(json.dumps([GOOD, GOOD]))
    line = the_error(kit, write_recipe, folder / "b" / "c.jsonl",
                     jsonl("", GOOD, {"messages": [{"role": "user", "content": 5}]}), source=folder)
    assert line.startswith(f"{folder / 'b' / 'c.jsonl'}:3: messages[0] needs a string 'content'"), line
    (folder / "b" / "c.jsonl").write_bytes(jsonl(GOOD))
    line = the_error(kit, write_recipe, folder / "a2.json", json.dumps([GOOD, {"messages": "hi"}]).encode(),
                     source=folder, name="again.yaml")
    assert line.startswith(f"{folder / 'a2.json'}: row 2: needs a 'messages' list"), line


def test_raise_truncation_names_the_physical_line(tmp_path, write_recipe, kit):
    line = the_error(kit, write_recipe, tmp_path / "rows.jsonl", jsonl(GOOD, "", "", GOOD, LONG, GOOD),
                     max_seq_length=40, truncation="raise")
    assert line.startswith(f"{tmp_path / 'rows.jsonl'}:5: has "), line
    assert "more than max_seq_length 40 (truncation: raise)" in line


@pytest.mark.parametrize("workers", [1, 2])
def test_a_chat_template_that_raises_names_the_row_and_the_template(tmp_path, write_recipe, kit, workers):
    rows = [GOOD] * 150 + ["", SYSTEM_IN_THE_MIDDLE] + [GOOD] * 150
    line = the_error(kit, write_recipe, tmp_path / "rows.jsonl", jsonl(*rows), tokenizer={"chat_template": "gemma"},
                     num_workers=workers)
    assert line == (f"{tmp_path / 'rows.jsonl'}:152: chat template 'gemma' fails for this row: gemma: a system "
                    "message may only come first (it is merged into the first user turn)")


def test_inline_template_source_is_named_as_the_recipe_key(tmp_path, write_recipe, kit):
    template = "{% for m in messages %}{{ m['content'] ~ (1 / (m['content'] | length)) }}{% endfor %}"
    empty_answer = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}
    line = the_error(kit, write_recipe, tmp_path / "rows.jsonl", jsonl(GOOD, empty_answer),
                     tokenizer={"chat_template": template})
    assert line.startswith(f"{tmp_path / 'rows.jsonl'}:2: the chat template in tokenizer.chat_template fails "
                           "for this row: ZeroDivisionError: "), line


def test_a_parquet_row_is_named_by_its_index(tmp_path, write_recipe, kit, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")
    path = tmp_path / "chats.parquet"
    datasets.Dataset.from_list([GOOD, GOOD, SYSTEM_IN_THE_MIDDLE]).to_parquet(str(path))
    with pytest.raises(UserError) as info:
        kit.prepare(write_recipe([{"source": path, "fraction": 1.0}], tokenizer={"chat_template": "gemma"}))
    assert info.value.problems[0].startswith(f"{path}: row 3: chat template 'gemma' fails for this row: ")


def test_the_tokenizers_own_template_is_named_so(tmp_path, write_recipe, kit, tokenizer_dir):
    own = tmp_path / "tokenizer"
    own.mkdir()
    for item in tokenizer_dir.iterdir():
        (own / item.name).write_bytes(item.read_bytes())
    (own / "chat_template.jinja").write_text("{% for m in messages %}{{ raise_exception('no ' ~ m['role']) "
                                             "if m['role'] == 'system' else m['content'] }}{% endfor %}")
    line = the_error(kit, write_recipe, tmp_path / "rows.jsonl",
                     jsonl(GOOD, {"messages": [{"role": "system", "content": "s"}, *GOOD["messages"]]}),
                     tokenizer={"name_or_path": str(own)})
    assert line == f"{tmp_path / 'rows.jsonl'}:2: the tokenizer's own chat template fails for this row: no system"
