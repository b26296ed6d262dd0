"""plugins.loggers: the `jsonl` metrics file and the `rich` console logger, driven through hooks."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from framework.data import progress
from framework.data.progress import progress_bar
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


# -- in a terminal -------------------------------------------------------------------------------

def screen(output: str, width: int = 100) -> tuple[list[str], list[int]]:
    """What a terminal of `width` columns holds after `output`, scrollback included, and the rows it
    started by wrapping a line that ran past its edge: as much of a VT100 as rich's live display
    uses (carriage return, line feed, erase line, cursor up; colours and the cursor's visibility are
    ignored)."""
    rows: list[list[str]] = [[]]
    row = col = 0
    wrapped = []
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]", output):
        if token == "\r":
            col = 0
        elif token == "\n":
            row, col = row + 1, 0
        elif token.startswith("\x1b["):
            if token.endswith("K"):
                rows[row] = [] if token == "\x1b[2K" else rows[row][:col]
            elif token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
            continue
        else:
            if col == width:  # the terminal's own wrap, wherever the line is
                row, col = row + 1, 0
                wrapped.append(row)
            while len(rows) <= row:
                rows.append([])
            rows[row].extend(" " * (col + 1 - len(rows[row])))
            rows[row][col] = token
            col += 1
        while len(rows) <= row:
            rows.append([])
    return ["".join(r).rstrip() for r in rows], wrapped


def terminal_console(buffer: io.StringIO) -> Console:
    return Console(file=buffer, force_terminal=True, width=100, color_system=None)


def test_in_a_terminal_each_logging_step_stays_on_screen_above_the_bar(tmp_path, hooks, run_info):
    logger = rich(str(tmp_path))
    buffer = io.StringIO()
    logger.console = terminal_console(buffer)
    drive(hooks(logger), run_info)
    lines, wrapped = screen(buffer.getvalue())
    assert "step 2: loss 1.5  lr 5.00e-06  tokens/s 1,235" in lines
    assert "step 4: loss 0.75  lr 0.00e+00  tokens/s 999" in lines
    assert lines.index("checkpoint at step 2: out/checkpoint-2") > lines.index(
        "step 2: loss 1.5  lr 5.00e-06  tokens/s 1,235")
    assert not wrapped


def test_a_bar_inside_the_training_bar_leaves_nothing_behind(tmp_path, hooks, run_info, monkeypatch, capsys):
    """An evaluation's bar (framework.progress_bar) shows under training's while it runs, then goes."""
    monkeypatch.setenv("FORCE_COLOR", "1")  # stderr is a terminal to rich
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setattr(progress, "_console", None, raising=False)  # made afresh under these settings
    hook = hooks(rich(str(tmp_path)))
    hook.seqtune_train_start(run=run_info)
    hook.seqtune_step_end(step=1)
    with progress_bar("evaluating", 300, unit="tokens") as advance:
        advance(300)
    hook.seqtune_log(step=1, metrics={"eval_loss": 2.5})
    hook.seqtune_train_end(summary={"steps": 1})
    lines, wrapped = screen(re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().err))
    assert not [line for line in lines if line.startswith("evaluating")], lines
    assert "step 1: eval_loss 2.5" in lines and not wrapped


def in_terminal(argv: list[str], cwd: Path, columns: int = 100, timeout: float = 900) -> tuple[int, str]:
    """Run a command with a pseudo-terminal of `columns` columns as its stdin, stdout and stderr."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {**os.environ, "COLUMNS": str(columns), "LINES": "40", "TERM": "xterm-256color"}
    process = subprocess.Popen(argv, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([master], [], [], 1)[0]:
            try:
                data = os.read(master, 65536)
            except OSError:  # the other end closed: the command has finished
                break
            if not data:
                break
            chunks.append(data)
    process.kill() if process.poll() is None else None
    os.close(master)
    return process.wait(), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
def test_a_run_in_a_100_column_terminal_reads_whole(repo, tmp_path):
    """The issue's terminal: every logging step and evaluation keeps its line, no finished bar stays
    behind, no line is cut mid-word at the edge, and DeepSpeed (unused) says nothing at a checkpoint."""
    seqtune = Path(sys.executable).with_name("seqtune")
    code, output = in_terminal([str(seqtune), "train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'out'}",
                                "train.max_steps=20", "logging.every_steps=5", "eval.every_steps=10",
                                "checkpoint.every=10", f"data.cache_dir={tmp_path / 'cache'}"], repo)
    lines, wrapped = screen(re.sub(r"\x1b\[[0-9;]*m", "", output))
    assert code == 0, output[-3000:]
    assert [int(line.split()[1][:-1]) for line in lines if re.match(r"step \d+: loss ", line)] == [5, 10, 15, 20]
    assert [int(line.split()[1][:-1]) for line in lines if re.match(r"step \d+: eval_loss ", line)] == [10, 20]
    assert not [line for line in lines if line.startswith("evaluating")], lines
    assert not wrapped, [lines[row - 1: row + 1] for row in wrapped]
    assert any(line.startswith("data: 2,000 rows -> 2,000 kept") for line in lines)  # long: wrapped by words
    assert "Setting accelerator" not in output
    assert [line for line in lines if line][-1].startswith("done: model saved to")
