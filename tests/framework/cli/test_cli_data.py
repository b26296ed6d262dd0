"""`seqtune train` on bad and good data, through the real console script.

Bad data stops the run with exit code 2 and one line naming the source and its row (or line),
before output_dir exists; a good run writes the mixture (data.mix_dir) and the truncation report.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from seqtune_testing import error_lines, mixture_rows

QUICKSTART = "recipes/quickstart.yaml"


def chat(*turns) -> dict:
    roles = ("user", "assistant")
    return {"messages": [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]}


GOOD = chat("Reverse: c a t", "t a c")


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture
def train(seqtune, repo, tmp_path):
    """train(source, *overrides) -> the finished `seqtune train` run on the quickstart recipe."""

    def _train(source: Path, *overrides: str, fraction: float = 1.0):
        return seqtune("train", repo / QUICKSTART, f"output_dir={tmp_path / 'out'}",
                       f"tokenizer.name_or_path={repo / 'recipes/quickstart/tokenizer'}", "eval=null",
                       f"data.mixture=[{{source: {source}, fraction: {fraction}}}]",
                       f"data.cache_dir={tmp_path / 'cache'}", "train.max_steps=1", *overrides, cwd=tmp_path)

    return _train


def the_error_line(result) -> str:
    """The run failed like a user error: exit 2, one error line, no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and "╭" not in output, output
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    return lines[0]


BAD_ROWS = {  # rows ("" is a blank line), and the error after "<file>:"
    "missing_messages_column": ([GOOD, {"conversations": GOOD["messages"]}, GOOD],
                                "2: needs a 'messages' list of {role, content} messages"),
    "wrong_typed_content": ([GOOD, GOOD, {"messages": [{"role": "user", "content": "q"},
                                                       {"role": "assistant", "content": 5}]}],
                            "3: messages[1] needs a string 'content'"),
    "unknown_role": ([GOOD, {"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]}],
                     "2: messages[1] has unknown role 'robot'"),
    "unknown_role_after_blank_lines": ([GOOD, "", "", GOOD, "", {"messages": [{"role": "robot", "content": "a"}]}],
                                       "6: messages[0] has unknown role 'robot'"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_is_one_line_naming_file_and_line(train, tmp_path, case):
    rows, reason = BAD_ROWS[case]
    source = write_lines(tmp_path / "rows.jsonl", rows)
    line = the_error_line(train(source))
    assert line.startswith(f"{source}:{reason}"), line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_rows_with_nothing_to_train_are_dropped_and_counted(train, tmp_path):
    no_answer = {"messages": [{"role": "user", "content": "q"}]}
    source = write_lines(tmp_path / "rows.jsonl", [no_answer, GOOD, {"messages": []}, GOOD, no_answer])
    result = train(source)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "data: 5 rows -> 2 kept (0 truncated, 3 dropped: 1 empty, 2 no assistant turn)" in result.stderr
    report = json.loads((tmp_path / "out" / "truncation_report.json").read_text())
    assert report["dropped"] == {"empty": 1, "no_assistant_turn": 2, "no_trainable_token": 0,
                                 "cut_by_truncation": 0}


@pytest.mark.slow
@pytest.mark.parametrize("rows, reason", [
    ([GOOD, "", {"messages": [{"role": "user", "content": "q"}]}], "3: has no assistant turn to train on"),
    ([GOOD, GOOD, {"messages": []}], "3: the row is empty after its format")])
def test_untrainable_error_names_the_first_such_row(train, tmp_path, rows, reason):
    source = write_lines(tmp_path / "rows.jsonl", rows)
    line = the_error_line(train(source, "data.untrainable=error"))
    assert line.startswith(f"{source}:{reason}") and "(data.untrainable: error;" in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_malformed_jsonl_line_is_one_line_naming_file_and_line(train, tmp_path):
    source = write_lines(tmp_path / "rows.jsonl", [GOOD, GOOD, "", '{"messages": [{"role": "user"', GOOD])
    line = the_error_line(train(source))
    assert line.startswith(f"{source}:4: invalid JSON line"), line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_column_mapping_to_a_missing_column_names_source_and_columns(train, tmp_path, seqtune, repo):
    source = write_lines(tmp_path / "rows.jsonl", [GOOD, GOOD])
    result = seqtune("train", repo / QUICKSTART, f"output_dir={tmp_path / 'out'}",
                     f"tokenizer.name_or_path={repo / 'recipes/quickstart/tokenizer'}", "eval=null",
                     f"data.mixture=[{{source: {source}, fraction: 1.0, columns: {{messages: conversations}}}}]",
                     f"data.cache_dir={tmp_path / 'cache'}", "train.max_steps=1", cwd=tmp_path)
    line = the_error_line(result)
    assert line.startswith(f"{source}: data.mixture[0].columns") and "conversations" in line
    assert "(columns: messages)" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["fraction_zero", "empty_file"])
def test_a_mixture_with_no_rows_is_one_line(train, tmp_path, how):
    if how == "empty_file":
        source = write_lines(tmp_path / "rows.jsonl", [""])
        line = the_error_line(train(source))
        assert line.startswith(f"{source}: the file holds no rows"), line
    else:
        source = write_lines(tmp_path / "rows.jsonl", [GOOD, GOOD])
        line = the_error_line(train(source, fraction=0.0))
        assert line.startswith("data.mixture: the mixture has no rows"), line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_raise_truncation_names_source_row_and_length(train, tmp_path):
    long = chat("a long question " * 10, "a long answer " * 10)
    source = write_lines(tmp_path / "rows.jsonl", [GOOD, GOOD, long, GOOD])
    line = the_error_line(train(source, "data.truncation=raise", "data.max_seq_length=40"))
    assert line.startswith(f"{source}:3: has "), line
    assert "tokens, more than max_seq_length 40 (truncation: raise)" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_truncation_that_drops_every_row_is_a_user_error(train, tmp_path):
    source = write_lines(tmp_path / "rows.jsonl", [GOOD, GOOD, GOOD])
    line = the_error_line(train(source, "data.truncation=drop", "data.max_seq_length=5"))
    assert "max_seq_length" in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_good_run_writes_the_mixture_and_the_truncation_report(train, tmp_path, repo):
    rows = [chat(f"Reverse: {' '.join(w)}", " ".join(reversed(w)), f"Uppercase: {w}", w.upper())
            for w in ("cat", "fish", "ring", "sun", "moon", "tree", "bird", "lamp", "door", "rock")]
    source = write_lines(tmp_path / "rows.jsonl", rows)
    mix = tmp_path / "mix"
    overrides = (f"data.mix_dir={mix}", "data.max_seq_length=28", "data.truncation=turns")
    result = train(source, *overrides, fraction=1.5)
    assert result.returncode == 0, result.stdout + result.stderr

    stats = json.loads((mix / "mixture_stats.json").read_text())
    assert stats == {"rows": 15, "seed": 7, "sources": [{"source": str(source), "rows_available": 10,
                                                         "rows_used": 15, "fraction": 1.5, "count": None}]}
    mixed = [json.loads(line) for line in (mix / "mixture.jsonl").read_text().splitlines()]
    assert len(mixed) == 15
    for row in mixed:
        assert row["source"] == 0 and row["messages"] == rows[row["row"] - 1]["messages"]
    assert sorted({row["row"] for row in mixed}) == list(range(1, 11))

    report = json.loads((tmp_path / "out" / "truncation_report.json").read_text())
    assert report["max_seq_length"] == 28 and report["rows_in"] == 15
    # Every row (32 to 40 tokens) is longer than 28 tokens, and its first turn fits whole.
    assert report["rows_truncated"] == report["rows_kept"] == 15 and report["rows_dropped"] == 0
    assert report["lengths_after"]["max"] <= 28 < report["lengths_before"]["p50"]
    assert 0 < report["trainable_tokens_lost"] < report["trainable_tokens_in"]

    # The same numbers as the pipeline gives in-process for the same recipe (read from its cache).
    from framework.registry import bind_parts
    from framework.config import load_recipe
    from framework.data.pipeline import prepare_data
    from framework.model.tokenizer import load_tokenizer

    loaded = load_recipe(repo / QUICKSTART, [
        f"output_dir={tmp_path / 'out'}", f"tokenizer.name_or_path={repo / 'recipes/quickstart/tokenizer'}",
        "eval=null", f"data.mixture=[{{source: {source}, fraction: 1.5}}]", f"data.cache_dir={tmp_path / 'cache'}",
        *overrides])
    parts = bind_parts(loaded)
    tokenizer = load_tokenizer(loaded.recipe, parts.registry.entries["chat_templates"])
    data = prepare_data(loaded.recipe, parts.loaders, parts.formats, parts.truncation, tokenizer)
    assert data.from_cache
    assert report == vars(data.report)
    assert [(r["source"], r["row"]) for r in mixed] == list(zip(mixture_rows(data)["source"],
                                                               mixture_rows(data)["row"]))


@pytest.mark.slow
def test_a_second_run_reads_the_preprocessing_cache(train, tmp_path):
    source = write_lines(tmp_path / "rows.jsonl", [GOOD] * 4)
    first = train(source)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "data: 4 rows -> 4 kept" in first.stderr
    second = train(source, f"output_dir={tmp_path / 'again'}")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "data (cached): 4 rows -> 4 kept" in second.stderr


# -- `seqtune check --samples 1`: the same errors before anything trains (quick: no training) ------

@pytest.fixture
def check(seqtune, repo, tmp_path):
    """check(source, *overrides) -> `seqtune check --samples 1` of the quickstart recipe on `source`."""

    def _check(source: Path, *overrides: str):
        return seqtune("check", repo / QUICKSTART, "--samples", "1", f"output_dir={tmp_path / 'out'}",
                       f"tokenizer.name_or_path={repo / 'recipes/quickstart/tokenizer'}", "eval=null",
                       f"data.mixture=[{{source: {source}, fraction: 1.0}}]",
                       f"data.cache_dir={tmp_path / 'cache'}", *overrides, cwd=tmp_path)

    return _check


SYSTEM_IN_THE_MIDDLE = {"messages": [*GOOD["messages"], {"role": "system", "content": "s"},
                                     {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
BAD_BYTES = {  # the file's bytes, overrides, and the error after "<file>:"
    "invalid_utf8": (json.dumps(GOOD).encode() + b'\n\n{"messages": "caf\xe9"}\n', (),
                     "3: not valid UTF-8 (byte 0xe9 at byte 18 of the line); save the file as UTF-8"),
    "lone_surrogate": (json.dumps(GOOD).encode() + b'\n{"messages": [{"role": "user", "content": "\\ud800"}]}\n', (),
                       "2: holds \\ud800, half of a UTF-16 surrogate pair, not a character"),
    "deep_nesting": (b"\n" + b"[" * 100_000 + b"]" * 100_000 + b"\n", (),
                     "2: invalid JSON line: nested deeper than the parser's limit"),
    "template_raises": ("\n".join(json.dumps(row) for row in [GOOD, GOOD, SYSTEM_IN_THE_MIDDLE]).encode(),
                        ("tokenizer.chat_template=gemma",),
                        "3: chat template 'gemma' fails for this row: gemma: a system message may only come first"),
}


@pytest.mark.slow  # a subprocess each; test_bad_data_files.py covers the same in process, in the fast set
@pytest.mark.parametrize("case", sorted(BAD_BYTES))
def test_check_names_the_file_and_line_of_bad_bytes(check, tmp_path, case):
    data, overrides, reason = BAD_BYTES[case]
    source = tmp_path / "rows.jsonl"
    source.write_bytes(data)
    line = the_error_line(check(source, *overrides))
    assert line.startswith(f"{source}:{reason}"), line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_check_reads_a_bom_and_counts_the_rows_it_drops(check, tmp_path):
    source = tmp_path / "rows.jsonl"
    rows = [GOOD, {"messages": [{"role": "user", "content": "q"}]}, GOOD, {"messages": []}]
    source.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(row) + "\n" for row in rows).encode())
    result = check(source)
    assert result.returncode == 0, result.stderr
    assert "4 rows -> 2 kept (0 truncated, 2 dropped: 1 empty, 1 no assistant turn)" in result.stderr
    assert not (tmp_path / "out").exists()
