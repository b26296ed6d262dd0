"""A corpus of bad data files, through the real CLI: each stops with exit code 2, no traceback, one line
naming the file and the physical line (or the row, for columnar data), and nothing in output_dir.

`seqtune check --samples 1` runs the whole data pipeline (read, format, render, tokenize, truncate)
without a model, in process; a few cases also go through `seqtune train`, which must stop the same
way before it writes anything."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from framework.cli import app

REPO = Path(__file__).resolve().parents[3]
GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
LINE = json.dumps(GOOD) + "\n"


def chat(*turns: tuple[str, str]) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]}) + "\n"


def parquet_bytes() -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"messages": [[{"role": "robot", "content": "a"}]]}), sink)
    return sink.getvalue().to_pybytes()


DATA_CASES = {  # name: (file name, its bytes, extra overrides, the fragments the one line must hold)
    "invalid-utf8": ("rows.jsonl", LINE.encode() * 2 + b'{"messages": "caf\xe9"}\n', (),
                     ["rows.jsonl:3: not valid UTF-8"]),
    "lone-surrogate": ("rows.jsonl", (LINE * 3).encode() + rb'{"messages": [{"role": "user", "content": "a"}, '
                       rb'{"role": "assistant", "content": "\ud800"}]}' + b"\n", (),
                       ["rows.jsonl:4:", "surrogate"]),
    "deep-nesting": ("rows.jsonl", (LINE * 2 + "[" * 100_000 + "]" * 100_000 + "\n").encode(), (),
                     ["rows.jsonl:3: invalid JSON line", "nested deeper"]),
    "bad-json-after-blank-lines": ("rows.jsonl", (LINE + "\n\n" + LINE + "\n\n" + '{"messages": [}\n').encode(), (),
                                   ["rows.jsonl:7: invalid JSON line"]),
    "not-an-object": ("rows.jsonl", (LINE + "[1, 2]\n").encode(), (), ["rows.jsonl:2: expected a JSON object"]),
    "empty-file": ("rows.jsonl", b"", (), ["rows.jsonl: the file holds no rows"]),
    "blank-lines-only": ("rows.jsonl", b"\n\n  \n", (), ["rows.jsonl: the file holds no rows"]),
    "unknown-role": ("rows.jsonl", (LINE + "\n" + chat(("robot", "beep"), ("assistant", "x"))).encode(), (),
                     ["rows.jsonl:3: messages[0] has unknown role 'robot'"]),
    "content-not-a-string": ("rows.jsonl", (LINE + '{"messages": [{"role": "user", "content": 5}]}\n').encode(), (),
                             ["rows.jsonl:2: messages[0] needs a string 'content'"]),
    "no-messages-column": ("rows.jsonl", (LINE + '{"conversation": []}\n').encode(), (),
                           ["rows.jsonl:2: needs a 'messages' list"]),
    "column-mapping": ("rows.jsonl", LINE.encode(), ("data.mixture[0].columns={messages: chats}",),
                       ["data.mixture[0].columns names missing column(s) chats"]),
    "template-raises": ("rows.jsonl", (LINE + chat(("user", "a"), ("system", "late"), ("assistant", "b"))).encode(),
                        ("tokenizer.chat_template=gemma",),
                        ["rows.jsonl:2: chat template 'gemma' fails for this row"]),
    "truncation-raise": ("rows.jsonl", (LINE + chat(("user", "a b " * 200), ("assistant", "c"))).encode(),
                         ("data.truncation=raise",), ["rows.jsonl:2: has", "more than max_seq_length 64"]),
    "everything-dropped": ("rows.jsonl", chat(("user", "a b " * 200), ("assistant", "c")).encode(),
                           ("data.truncation=drop",), ["data: no row is left to train on"]),
    "untrainable-error": ("rows.jsonl", (LINE + chat(("user", "no answer"))).encode(), ("data.untrainable=error",),
                          ["rows.jsonl:2: has no assistant turn to train on"]),
    "json-invalid": ("rows.json", b'[{"messages": []},\n {"messages": ]\n', (), ["rows.json:2: invalid JSON"]),
    "json-missing-split": ("rows.json", json.dumps({"validation": [GOOD]}).encode(), (),
                           ["rows.json: has no split 'train'"]),
    "csv-bad-utf8": ("rows.csv", b"prompt,completion\nhi,yo\nb\xe9,x\n", ("data.mixture[0].format=prompt_completion",),
                     ["rows.csv", "not valid UTF-8"]),
    "parquet-corrupt": ("rows.parquet", b"PAR1 this is not parquet", (), ["rows.parquet", "cannot read"]),
    "parquet-bad-row": ("rows.parquet", None, (), ["rows.parquet: row 1: messages[0] has unknown role 'robot'"]),
    "text-not-a-string": ("rows.jsonl", b'{"text": "fine"}\n{"text": 7}\n', ("data.mixture[0].format=text",),
                          ["rows.jsonl:2: needs a string column 'text'"]),
    "prompt-completion-missing": ("rows.jsonl", b'{"prompt": "a"}\n', ("data.mixture[0].format=prompt_completion",),
                                  ["rows.jsonl: data.mixture[0].format 'prompt_completion' needs column(s) completion "
                                   "(columns: prompt)"]),
    "csv-missing-column": ("rows.csv", b"question,answer\nhi,yo\n", ("data.mixture[0].format=prompt_completion",),
                           ["rows.csv: data.mixture[0].format 'prompt_completion' needs column(s) prompt, completion "
                            "(columns: answer, question)"]),
    "sharegpt-bad-role": ("rows.jsonl", b'{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", '
                          b'"value": "b"}]}\n\n{"conversations": [{"from": "bot", "value": "b"}]}\n',
                          ("data.mixture[0].format=sharegpt",), ["rows.jsonl:3: conversations[0] has unknown role 'bot'"]),
}


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def args(here: Path, name: str, content: bytes | None, overrides=()) -> list[str]:
    (here / name).write_bytes(parquet_bytes() if content is None else content)
    return ["recipes/quickstart.yaml", f"data.mixture=[{{source: {here / name}, fraction: 1.0}}]",
            "data.max_seq_length=64", f"output_dir={here / 'out'}", f"data.cache_dir={here / 'cache'}",
            f"tokenizer.name_or_path={REPO / 'recipes/quickstart/tokenizer'}", *overrides]


def refused(result, fragments: list[str], here: Path) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stderr[-2000:])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stderr + result.stdout
    shown = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    # one problem: `error: <it>` (or, as before, a bullet under `error: problem:`)
    lines = [line[2:] for line in shown if line.startswith("•")] or \
        [line.removeprefix("error: ") for line in shown if line.startswith("error: ")]
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not (here / "out").exists()
    return lines[0]


@pytest.mark.parametrize("name", DATA_CASES)
def test_each_bad_data_file_is_one_clean_line(here, monkeypatch, name):
    monkeypatch.chdir(REPO)  # the recipe's own relative paths
    file, content, overrides, fragments = DATA_CASES[name]
    result = CliRunner().invoke(app, ["check", *args(here, file, content, overrides), "--samples", "1"])
    refused(result, fragments, here)


def test_a_bom_is_accepted_and_rows_without_an_answer_are_dropped_and_counted(here, monkeypatch):
    monkeypatch.chdir(REPO)
    content = b"\xef\xbb\xbf" + (LINE * 3 + chat(("user", "no answer"))).encode()
    result = CliRunner().invoke(app, ["check", *args(here, "rows.jsonl", content), "--samples", "1"])
    assert result.exit_code == 0, result.stderr
    assert "no assistant turn" in result.stderr and "4 rows -> 3 kept" in result.stderr


def test_the_corpus_is_large():
    assert len(DATA_CASES) >= 20  # and test_bad_recipes.py holds the bad recipes


@pytest.mark.slow
@pytest.mark.parametrize("name", ["invalid-utf8", "template-raises", "untrainable-error", "csv-missing-column"])
def test_train_stops_the_same_way_before_writing_anything(here, seqtune, name):
    file, content, overrides, fragments = DATA_CASES[name]
    result = seqtune("train", *args(here, file, content, overrides))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert all(fragment in result.stderr for fragment in fragments)
    assert not (here / "out").exists()
