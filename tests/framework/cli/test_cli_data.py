"""`seqtune train` on bad and good data, through the real console script.

Bad data stops the run with exit code 2 and one line naming the source and its row (or line),
before output_dir exists; a good run writes the mixture (data.mix_dir) and the truncation report.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

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
                       f"tokenizer.name_or_path={repo / 'recipes/quickstart/tokenizer'}",
                       f"data.mixture=[{{source: {source}, fraction: {fraction}}}]",
                       f"data.cache_dir={tmp_path / 'cache'}", "train.max_steps=1", *overrides, cwd=tmp_path)

    return _train


def the_error_line(result) -> str:
    """The run failed like a user error: exit 2, one bullet line, no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and "╭" not in output, output
    bullets = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("•")]
    assert len(bullets) == 1, result.stderr
    return bullets[0].removeprefix("•").strip()


BAD_ROWS = {
    "missing_messages_column": ([GOOD, {"conversations": GOOD["messages"]}, GOOD],
                                "row 2: needs a non-empty 'messages' list"),
    "wrong_typed_content": ([GOOD, GOOD, {"messages": [{"role": "user", "content": "q"},
                                                       {"role": "assistant", "content": 5}]}],
                            "row 3: messages[1] needs a string 'content'"),
    "unknown_role": ([GOOD, {"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]}],
                     "row 2: messages[1] has unknown role 'robot'"),
    "empty_message_list": ([GOOD, GOOD, GOOD, {"messages": []}], "row 4: needs a non-empty 'messages' list"),
    "no_assistant_turn": ([{"messages": [{"role": "user", "content": "q"}]}, GOOD],
                          "row 1: 'messages' has no assistant turn to train on"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_is_one_line_naming_file_and_row(train, tmp_path, case):
    rows, reason = BAD_ROWS[case]
    source = write_lines(tmp_path / "rows.jsonl", rows)
    line = the_error_line(train(source))
    assert line.startswith(f"{source}: {reason}"), line
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
                     f"tokenizer.name_or_path={repo / 'recipes/quickstart/tokenizer'}",
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
        result = train(source)
    else:
        source = write_lines(tmp_path / "rows.jsonl", [GOOD, GOOD])
        result = train(source, fraction=0.0)
    line = the_error_line(result)
    assert line.startswith("data.mixture: the mixture has no rows"), line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_raise_truncation_names_source_row_and_length(train, tmp_path):
    long = chat("a long question " * 10, "a long answer " * 10)
    source = write_lines(tmp_path / "rows.jsonl", [GOOD, GOOD, long, GOOD])
    line = the_error_line(train(source, "data.truncation=raise", "data.max_seq_length=40"))
    assert line.startswith(f"{source}: row 3: has "), line
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
        f"data.mixture=[{{source: {source}, fraction: 1.5}}]", f"data.cache_dir={tmp_path / 'cache'}",
        *overrides])
    parts = bind_parts(loaded)
    tokenizer = load_tokenizer(loaded.recipe, parts.registry.entries["chat_templates"])
    data = prepare_data(loaded.recipe, parts.loaders, parts.formats, parts.truncation, tokenizer)
    assert data.from_cache
    assert report == vars(data.report)
    assert [(r["source"], r["row"]) for r in mixed] == list(zip(data.build_mixture()["source"],
                                                               data.build_mixture()["row"]))


@pytest.mark.slow
def test_a_second_run_reads_the_preprocessing_cache(train, tmp_path):
    source = write_lines(tmp_path / "rows.jsonl", [GOOD] * 4)
    first = train(source)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "data: 4 rows -> 4 kept" in first.stderr
    second = train(source, f"output_dir={tmp_path / 'again'}")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "data (cached): 4 rows -> 4 kept" in second.stderr
