"""plugins.loggers: the `jsonl` metrics file and the `rich` console logger, driven through hooks."""
from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from plugins.loggers import format_metrics, jsonl, rich


def drive(hook, run_info):
    hook.seqtune_train_start(run=run_info)
    hook.seqtune_step_end(step=1)
    hook.seqtune_step_end(step=2)
    hook.seqtune_log(step=2, metrics={"loss": 1.5, "lr": 5e-06, "tokens_per_s": 1234.6})
    hook.seqtune_checkpoint_saved(step=2, path="out/checkpoint-2")
    hook.seqtune_step_end(step=3)
    hook.seqtune_step_end(step=4)
    hook.seqtune_log(step=4, metrics={"loss": 0.75, "lr": 0.0, "tokens_per_s": 999.0})
    hook.seqtune_train_end(summary={"steps": 4, "train_seconds": 1.25, "final_loss": 0.75})


# -- jsonl -------------------------------------------------------------------------------------

def test_jsonl_writes_one_object_per_log_call_and_a_summary(tmp_path: Path, hooks, run_info):
    out = tmp_path / "run"
    hook = hooks(jsonl(str(out)))
    drive(hook, run_info)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    first, second, summary = (json.loads(line) for line in lines)
    assert first["step"] == 2 and first["loss"] == 1.5 and first["lr"] == 5e-06
    assert first["tokens_per_s"] == 1234.6
    assert isinstance(first["time"], float)
    assert second["step"] == 4 and second["loss"] == 0.75
    assert second["time"] >= first["time"]
    assert summary == {"summary": {"steps": 4, "train_seconds": 1.25, "final_loss": 0.75}}


def test_jsonl_lines_are_readable_before_the_run_ends(tmp_path: Path, hooks, run_info):
    out = tmp_path / "nested" / "run"  # created at train start
    hook = hooks(jsonl(str(out), filename="log.jsonl"))
    hook.seqtune_train_start(run=run_info)
    hook.seqtune_log(step=1, metrics={"loss": 2.0})
    assert json.loads((out / "log.jsonl").read_text())["loss"] == 2.0  # flushed per call
    hook.seqtune_train_end(summary={})
    assert len((out / "log.jsonl").read_text().splitlines()) == 2


def test_jsonl_starts_a_fresh_file(tmp_path: Path, hooks, run_info):
    (tmp_path / "metrics.jsonl").write_text('{"stale": true}\n')
    hook = hooks(jsonl(str(tmp_path)))
    hook.seqtune_train_start(run=run_info)
    hook.seqtune_train_end(summary={"steps": 0})
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == ['{"summary": {"steps": 0}}']


# -- rich --------------------------------------------------------------------------------------

def test_rich_prints_plain_lines_when_not_a_terminal(tmp_path: Path, hooks, run_info, capsys):
    logger = rich(str(tmp_path))
    drive(hooks(logger), run_info)
    err = capsys.readouterr().err
    assert "tiny-run" in err and "8 rows" in err and "4 optimizer steps" in err
    assert "1,234 parameters" in err
    assert "step 2: loss 1.5  lr 5.00e-06  tokens/s 1,235" in err
    assert "step 4: loss 0.75" in err
    assert "checkpoint at step 2: out/checkpoint-2" in err
    assert "run summary" in err and "train_seconds" in err


def test_rich_shows_only_the_chosen_metrics(tmp_path: Path, hooks, run_info):
    logger = rich(str(tmp_path), show=["loss"])
    buffer = io.StringIO()
    logger.console = Console(file=buffer, width=120)
    drive(hooks(logger), run_info)
    text = buffer.getvalue()
    assert "step 2: loss 1.5\n" in text
    assert "step 4: loss 0.75\n" in text
    assert "tokens/s" not in text


def test_format_metrics():
    assert format_metrics({"loss": 1.23456, "lr": 2e-5, "tokens_per_s": 12345.4, "num_tokens": 1e6}) == (
        "loss 1.235  lr 2.00e-05  tokens/s 12,345  num_tokens 1,000,000")
    assert format_metrics({}) == ""
