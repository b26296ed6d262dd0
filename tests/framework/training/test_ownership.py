"""An output_dir belongs to one run, through the real CLI: another run is refused (naming what
differs) and changes nothing, a folder of other files is left alone, --overwrite replaces, and the
same command again continues or, for a finished run, has nothing to do."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from seqtune_testing import error_lines

STEPS = 6
COMMON = [f"train.max_steps={STEPS}", "train.per_device_batch_size=8", "logging.loggers=[jsonl]",
          "logging.every_steps=1"]
HINT = "use another output_dir, or set overwrite_output_dir=true (or pass --overwrite) to replace"


def run_train(repo: Path, out: Path | str, *extra: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real `seqtune train` on a small quickstart run (recipe paths absolute, so any cwd works)."""
    exe = Path(sys.executable).with_name("seqtune")
    paths = [f"tokenizer.name_or_path={repo / 'recipes/quickstart/tokenizer'}",
             f"data.mixture=[{{source: {repo / 'recipes/quickstart/data/train.jsonl'}, count: 48}}]",
             f"eval.mixture=[{{source: {repo / 'recipes/quickstart/data/eval.jsonl'}, fraction: 1.0}}]"]
    command = [str(exe), "train", str(repo / "recipes/quickstart.yaml"), f"output_dir={out}", *COMMON, *paths,
               *extra]
    return subprocess.run(command, cwd=cwd or repo, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def used(tmp_path_factory, repo) -> Path:
    """A finished run with checkpoints (at steps 3 and 6)."""
    out = tmp_path_factory.mktemp("used") / "out"
    result = run_train(repo, out, "checkpoint.every=3")
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


def refused_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return error_lines(result.stderr)


@pytest.mark.slow
def test_another_run_into_a_used_output_dir_is_refused_naming_what_differs(used, repo):
    before = snapshot(used)
    other = run_train(repo, used, "checkpoint.every=3", "optimizer.lr=1e-3", "scheduler=constant")
    assert refused_lines(other) == [f"output_dir {used} holds another run (optimizer, scheduler differ); "
                                  f"{HINT} it"]
    assert snapshot(used) == before


@pytest.mark.slow
def test_another_run_without_checkpoints_is_refused(repo, tmp_path):
    out = tmp_path / "out"
    assert run_train(repo, out).returncode == 0
    before = snapshot(out)
    other = run_train(repo, out, "model.config.hidden_size=64", "train.clip_grad_norm=1.0")
    assert refused_lines(other) == [f"output_dir {out} holds another run (model, batch differ); {HINT} it"]
    assert snapshot(out) == before


@pytest.mark.slow
def test_a_relative_output_dir_of_other_files_is_refused_and_left_untouched(repo, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "config.json").write_text('{"mine": true}')
    (notes / "notes.txt").write_text("keep me")
    result = run_train(repo, "notes", cwd=tmp_path)
    assert refused_lines(result) == [f"output_dir notes holds files that are not a seqtune run (config.json, "
                                   f"notes.txt); {HINT} them"]
    assert sorted(p.name for p in notes.iterdir()) == ["config.json", "notes.txt"]
    assert (notes / "config.json").read_text() == '{"mine": true}'


@pytest.mark.slow
def test_the_same_command_again_has_nothing_to_do_once_the_run_finished(used, repo):
    before = snapshot(used)
    # Logging, checkpoint cadence and the run's name are not part of what the run is.
    again = run_train(repo, used, "checkpoint.every=2", "checkpoint.keep_last=1", "logging.every_steps=3",
                      "run_name=renamed")
    assert again.returncode == 0, again.stderr[-2000:]
    finished = f"output_dir {used} already holds this run, finished after {STEPS} steps: nothing to train"
    assert finished in again.stderr
    assert snapshot(used) == before


@pytest.mark.slow
def test_overwrite_replaces_the_old_run_and_trains_afresh(used, repo, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(used, out)
    (out / "notes.txt").write_text("old")
    old_identity = json.loads((out / "run.json").read_text())["identity"]
    result = run_train(repo, out, "optimizer.lr=1e-3", "--overwrite")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming" not in result.stderr
    assert not (out / "notes.txt").exists() and not (out / "checkpoints").exists()
    record = json.loads((out / "run.json").read_text())
    assert record["finished"] == STEPS and record["identity"]["optimizer"] != old_identity["optimizer"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [record.get("step") for record in records if "eval_loss" not in record]
    assert steps == [*range(1, STEPS + 1), None]  # a fresh record, not the old one continued


@pytest.mark.slow
def test_overwrite_never_deletes_what_the_run_reads(repo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(repo / "recipes/quickstart/data/train.jsonl", out / "rows.jsonl")
    result = run_train(repo, out, f"data.mixture=[{{source: {out / 'rows.jsonl'}, count: 48}}]", "--overwrite")
    assert refused_lines(result) == [f"overwrite_output_dir: refusing to replace output_dir {out}, which holds "
                                   f"data.mixture[0].source ({out / 'rows.jsonl'}); use another output_dir"]
    assert (out / "rows.jsonl").exists()


@pytest.mark.slow
def test_a_checkpoint_named_from_another_run_is_refused_before_anything_is_written(used, repo, tmp_path):
    out = tmp_path / "out"
    checkpoint = used / "checkpoints/step-00000003"
    result = run_train(repo, out, f"checkpoint.resume={checkpoint}", "optimizer.lr=1e-3")
    assert refused_lines(result) == [f"checkpoint.resume: {checkpoint} belongs to another "
                                   "run (optimizer differs), so it cannot continue this run exactly; use "
                                   "checkpoint.resume=never to start over"]
    assert not out.exists()
