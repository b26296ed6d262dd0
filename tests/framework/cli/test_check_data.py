"""`seqtune check`: the data as training sees it, before anything trains. With `--samples N` it runs
the pipeline; without, it stays cheap and static (no torch, no datasets) but still reads each local
source's header and first row, so a recipe `check` calls valid does not stop at its data in `train`."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from framework.cli import app

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "id": 1}
SHAREGPT = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}


@pytest.mark.slow
def test_samples_show_trained_text_cuts_and_the_runs_size(seqtune, tmp_path):
    result = seqtune("check", "recipes/quickstart.yaml", "--samples", "3", "data.max_seq_length=24",
                     "train.gradient_accumulation_steps=2", f"output_dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("sample ") == 3 and "✂ [cut here:" in out
    assert "effective batch: 32 rows (16 x 2 accumulation x 1 processes)" in out
    assert "optimizer steps:" in out and "warmup steps:" in out and "packing efficiency:" in out
    assert "truncated" in result.stderr  # the truncation report, from preprocessing
    assert not (tmp_path / "out").exists()  # a check writes nothing to output_dir


def test_without_samples_check_stays_static(repo):
    code = ("import sys; from framework.cli import app\n"
            "try: app(['check', 'recipes/quickstart.yaml'])\n"
            "except SystemExit as e: assert e.code in (0, None)\n"
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr


# -- without --samples: each local source's header and first row ---------------------------------------

def write(folder: Path, kind: str, rows: list[dict]) -> Path:
    """`rows` as a local source of one kind: jsonl, json, csv, parquet or saved (save_to_disk)."""
    import datasets

    path = folder / {"saved": "saved"}.get(kind, f"rows.{kind}")
    if kind == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif kind == "json":
        path.write_text(json.dumps(rows))
    else:
        table = datasets.Dataset.from_list(rows)
        {"csv": lambda: table.to_csv(str(path), index=False), "parquet": lambda: table.to_parquet(str(path)),
         "saved": lambda: table.save_to_disk(str(path))}[kind]()
    return path


def check(*args: str):
    return CliRunner().invoke(app, ["check", "recipes/quickstart.yaml", *args])


def mixture(key: str, *entries: dict) -> str:
    return f"{key}=" + json.dumps([{"fraction": 1.0, **e} for e in entries], default=str)


def problems(result) -> list[str]:
    """The problem lines of a refused check: exit 2, no traceback, nothing on stdout."""
    assert result.exit_code == 2, (result.exit_code, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    bullets = [line[2:] for line in lines if line.startswith("•")]
    return bullets or [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]


@pytest.fixture
def here(tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(repo)  # the recipe's own relative paths
    return tmp_path


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet", "saved"])
def test_a_mapping_to_a_missing_column_names_the_columns_there_are(here, kind):
    rows = [{"messages": "hi", "id": "1"}] if kind == "csv" else [CHAT]
    source = write(here, kind, rows)
    result = check(mixture("data.mixture", {"source": source, "columns": {"messages": "conversations"}}))
    assert problems(result) == [f"{source}: data.mixture[0].columns names missing column(s) conversations "
                                "(columns: id, messages)"]


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_a_column_the_format_needs_is_missing(here, kind):
    source = write(here, kind, [{"question": "2+2?", "answer": "four"}])
    result = check(mixture("data.mixture", {"source": source, "format": "prompt_completion"}))
    assert problems(result) == [f"{source}: data.mixture[0].format 'prompt_completion' needs column(s) prompt, "
                                "completion (columns: answer, question); map them with data.mixture[0].columns: "
                                "{prompt: <column>}"]


def test_sharegpt_rows_read_as_messages_name_their_column(here):
    source = write(here, "jsonl", [SHAREGPT])
    (line,) = problems(check(mixture("data.mixture", {"source": source})))
    assert line.startswith(f"{source}: data.mixture[0].format 'messages' needs column(s) messages "
                           "(columns: conversations)")


def test_a_malformed_first_row_is_the_error_train_stops_with(here):
    source = here / "rows.jsonl"
    source.write_text('\n{"messages": [{"role": "robot", "content": "a"}]}\n')
    assert problems(check(mixture("data.mixture", {"source": source}))) == [
        f"{source}:2: messages[0] has unknown role 'robot' (expected one of: system, user, assistant, tool)"]


def test_every_source_and_the_recipe_are_checked_in_one_pass(here):
    csv, parquet = write(here, "csv", [{"question": "q", "answer": "a"}]), write(here, "parquet", [CHAT])
    good = write(here, "jsonl", [CHAT])
    result = check(mixture("data.mixture", {"source": good}, {"source": csv, "format": "alpaca"}),
                   mixture("eval.mixture", {"source": parquet, "columns": {"messages": "chat"}}), "optimizer.lrr=1")
    lines = problems(result)
    assert len(lines) == 3, lines
    assert any(line.endswith("optimizer.lrr: unknown option; did you mean 'lr'?") for line in lines)
    assert any(line.startswith(f"{csv}: data.mixture[1].format 'alpaca' needs column(s) instruction, output")
               for line in lines)
    assert f"{parquet}: eval.mixture[0].columns names missing column(s) chat (columns: id, messages)" in lines


@pytest.mark.parametrize("source", ["mydata/qa.cvs", "chats/"])
def test_a_path_that_does_not_exist_is_never_a_hub_name(here, source):
    started = time.monotonic()
    (line,) = problems(check(mixture("data.mixture", {"source": source})))
    assert line.endswith(f"data.mixture[0].source: no such file or folder: {source} (relative paths are from the "
                         "working directory; a hub dataset of this name needs data.mixture[0].loader=hub)")
    assert time.monotonic() - started < 10  # it asked no hub


def test_only_the_head_of_a_source_is_read(here):
    """Bytes after the first row are the pipeline's to judge (check --samples, train), not a plain check's."""
    junk = b"\xff not JSON, not UTF-8 {[\n"
    jsonl, listed = here / "rows.jsonl", here / "rows.json"
    jsonl.write_bytes(json.dumps(CHAT).encode() + b"\n" + junk)
    listed.write_bytes(b"[" + json.dumps(CHAT).encode() + b",\n" + junk)
    (here / "rows.csv").write_bytes(b"prompt,completion\nhi,yo\n" + junk)
    result = check(mixture("data.mixture", {"source": jsonl}, {"source": listed},
                           {"source": here / "rows.csv", "format": "prompt_completion"}))
    assert result.exit_code == 0, result.stderr


def test_reading_first_rows_imports_no_heavy_package(here, repo):
    sources = [write(here, kind, [CHAT if kind != "csv" else {"prompt": "a", "completion": "b"}])
               for kind in ("csv", "parquet", "saved", "json")]
    entries = [{"source": s, **({"format": "prompt_completion"} if s.suffix == ".csv" else {})} for s in sources]
    code = ("import sys; from framework.cli import app\n"
            f"try: app(['check', 'recipes/quickstart.yaml', {mixture('data.mixture', *entries)!r}])\n"
            "except SystemExit as e: assert e.code in (0, None), e.code\n"
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr[-2000:]
