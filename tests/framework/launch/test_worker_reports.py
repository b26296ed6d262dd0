"""A launched run (two processes, through the real `seqtune train`) ends as a run of one process does: a user's
mistake in the workers is one error block and exit 2, a Ctrl-C one "stopped" line, a crash its traceback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from seqtune_testing import REPO, SEQTUNE

TWO = ["launch.num_processes=2", "launch.device=cpu", "logging.loggers=[jsonl]", "train.per_device_batch_size=4",
       "optimizer={name: sgd, lr: 0.1}", "scheduler=constant"]
NOISE = ("Traceback", "ChildFailedError", "closing signal", "death signal", "FAILED")


def rows(count: int) -> str:
    return f"data.mixture=[{{source: recipes/quickstart/data/train.jsonl, count: {count}}}]"


def one_error_block(result: subprocess.CompletedProcess, problem: str) -> None:
    """Exit 2, `problem` once, and nothing of torchrun's report or of a traceback."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.count(problem) == 1, result.stderr[-3000:]
    assert sum(line.startswith("error") for line in result.stderr.splitlines()) == 1, result.stderr[-3000:]
    assert not [word for word in NOISE if word in result.stderr], result.stderr[-3000:]


@pytest.mark.slow
def test_a_bad_row_found_by_the_workers_is_one_error(seqtune, tmp_path):
    """Row 21 of the file has a role no format knows: only the workers' preprocessing reads that far."""
    good = (REPO / "recipes/quickstart/data/train.jsonl").read_text().splitlines()
    bad = json.dumps({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]})
    (tmp_path / "chats.jsonl").write_text("\n".join([*good[:20], bad, *good[20:40]]) + "\n")
    result = seqtune("train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'out'}", *TWO,
                     f"data.mixture=[{{source: {tmp_path / 'chats.jsonl'}, fraction: 1.0}}]", timeout=300)
    one_error_block(result, "chats.jsonl:21: messages[0] has unknown role 'robot'")


@pytest.mark.slow
def test_an_output_dir_holding_another_run_is_one_error(seqtune, tmp_path):
    """Every worker finds it (each used to print it, then torchrun its report): shown once."""
    out = tmp_path / "out"
    first = seqtune("train", "recipes/quickstart.yaml", f"output_dir={out}", *TWO[1:], rows(16), "train.max_steps=1")
    assert first.returncode == 0, first.stderr[-3000:]
    result = seqtune("train", "recipes/quickstart.yaml", f"output_dir={out}", *TWO, rows(32), "train.max_steps=2",
                     timeout=300)
    one_error_block(result, f"output_dir {out} holds another run")


@pytest.mark.slow
def test_a_crash_in_a_worker_still_shows_its_traceback(seqtune, tmp_path, monkeypatch):
    (tmp_path / "crash_plugin.py").write_text(
        "import os\nfrom framework import hookimpl\n\n@hookimpl\ndef seqtune_step_end(step):\n"
        "    if os.environ.get('RANK') == '0':\n        raise RuntimeError('a bug in a plugin')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    result = seqtune("train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'out'}", *TWO, rows(16),
                     "train.max_steps=2", "plugins=[crash_plugin]", timeout=300)
    assert result.returncode not in (0, 2)
    assert "Traceback" in result.stderr and "RuntimeError: a bug in a plugin" in result.stderr


SLOW_PLUGIN = """import os, time
from framework import hookimpl


@hookimpl
def seqtune_step_end(step):
    if step == 2 and os.environ.get('RANK') == '0' and os.environ.get('REACHED'):
        open(os.environ['REACHED'], 'w').close()  # the test's cue to press Ctrl-C
    time.sleep(0.5)
"""


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_says_stopped_once_and_the_run_resumes(seqtune, tmp_path, monkeypatch):
    """SIGINT to the command's process group, as a terminal's Ctrl-C sends it."""
    (tmp_path / "slow_plugin.py").write_text(SLOW_PLUGIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    reached = tmp_path / "reached"
    args = ["train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'out'}", *TWO, rows(32), "train.max_steps=8",
            "plugins=[slow_plugin]"]
    run = subprocess.Popen([str(SEQTUNE), *args], cwd=REPO, env={**os.environ, "REACHED": str(reached)},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not reached.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(run.pid, signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 128 + signal.SIGINT, stderr[-3000:]
    stopped = [line for line in stderr.splitlines() if line.startswith("stopped")]
    assert len(stopped) == 1 and stopped[0].startswith("stopped: stopped by SIGINT after step"), stderr[-3000:]
    assert not [word for word in NOISE if word in stderr], stderr[-3000:]
    resumed = seqtune(*args, timeout=300)
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr[-3000:]
    assert (tmp_path / "out/model.safetensors").exists()
