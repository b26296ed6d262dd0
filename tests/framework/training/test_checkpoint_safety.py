"""Checkpoints are data, never code, and complete or invisible, through the real CLI.

A planted pickle is refused before it can run; SIGKILL inside a save (files written, no marker yet)
and inside the cleanup of an old checkpoint (part of it deleted) leaves nothing that resume would
take for complete, and the resumed run ends bit-identical to an uninterrupted one. The faults come
from a plugin module that wraps `torch.save` and `shutil.rmtree` at import, so the engine runs as is.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from seqtune_testing import error_lines

PLUGIN = '''
import os, shutil, signal
from pathlib import Path

import torch
from framework import hookimpl

FAULT, AT = os.environ.get("FAULT", ""), int(os.environ.get("FAULT_AT", "0"))
STEP = [0]
_save, _rmtree = torch.save, shutil.rmtree

@hookimpl
def seqtune_step_end(step):
    STEP[0] = step
    if FAULT in ("SIGKILL", "SIGTERM") and step == AT:
        os.kill(os.getpid(), getattr(signal, FAULT))

def save(obj, path, *args, **kwargs):
    _save(obj, path, *args, **kwargs)
    if FAULT == "save" and STEP[0] == AT and Path(path).name == "optimizer.pt":
        os.kill(os.getpid(), signal.SIGKILL)  # weights and optimizer written; scheduler, RNG, marker not

def rmtree(path, *args, **kwargs):
    path = Path(path)
    if FAULT == "cleanup" and STEP[0] == AT and path.is_dir() and "step-" in path.name:
        files = sorted(path.iterdir())
        for file in files[:len(files) // 2]:  # part of the old checkpoint is gone, then the kill
            file.unlink()
        os.kill(os.getpid(), signal.SIGKILL)
    return _rmtree(path, *args, **kwargs)

torch.save, shutil.rmtree = save, rmtree
'''
STEPS = 16  # 5 steps per epoch; checkpoints at 4, 8, 12, 16, the newest two kept
COMMON = [f"train.max_steps={STEPS}", "train.per_device_batch_size=8", "train.gradient_accumulation_steps=2",
          "data.mixture=[{source: recipes/quickstart/data/train.jsonl, count: 160}]", "checkpoint.every=4",
          "checkpoint.keep_last=2", "logging.loggers=[jsonl]", "plugins=[safety_plugin]"]
NEEDED = ("config.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_rank0.pt",
          "trainer_state.json")


class Payload:
    """A pickle that creates `marker` when it is unpickled: what a planted checkpoint could run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def train(tmp_path_factory, repo):
    """train(output_dir, fault, at, *overrides): the real `seqtune train` on a small quickstart run."""
    plugins = tmp_path_factory.mktemp("plugins")
    (plugins / "safety_plugin.py").write_text(PLUGIN)

    def _train(out: Path, fault: str = "", at: int = 0, *extra: str) -> subprocess.CompletedProcess:
        path = os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, "FAULT": fault, "FAULT_AT": str(at)}
        exe = Path(sys.executable).with_name("seqtune")
        command = [str(exe), "train", "recipes/quickstart.yaml", f"output_dir={out}", *COMMON, *extra]
        return subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=600)

    return _train


@pytest.fixture(scope="module")
def whole(train, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The uninterrupted run's final weights."""
    out = tmp_path_factory.mktemp("whole") / "out"
    result = train(out)
    assert result.returncode == 0, result.stderr[-2000:]
    return load_file(str(out / "model.safetensors"))


def same_weights(want: dict[str, torch.Tensor], out: Path) -> bool:
    got = load_file(str(out / "model.safetensors"))
    return want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


@pytest.mark.slow
def test_a_planted_pickle_is_refused_in_one_line_and_never_runs(train, tmp_path):
    out, marker = tmp_path / "out", tmp_path / "pwned"
    assert train(out, "SIGKILL", 6).returncode == -signal.SIGKILL
    torch.save(Payload(marker), out / "checkpoints/step-00000004/optimizer.pt")
    before = snapshot(out)
    result = train(out)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and errors[0].startswith("checkpoint.resume:")
    assert (f"{out}/checkpoints/step-00000004/optimizer.pt is not a plain tensor file (weights_only load "
            "refused it)") in errors[0]
    assert "it may not be a seqtune checkpoint, or it was tampered with" in errors[0]
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr
    assert not marker.exists()
    assert snapshot(out) == before  # the checkpoint is read before anything is written


@pytest.mark.slow
def test_sigkill_inside_a_save_leaves_it_invisible_and_resume_is_exact(train, whole, tmp_path):
    out = tmp_path / "out"
    assert train(out, "save", 12).returncode == -signal.SIGKILL
    checkpoints = out / "checkpoints"
    assert listing(checkpoints) == [".partial-step-00000012", "step-00000004", "step-00000008"]
    assert "trainer_state.json" not in listing(checkpoints / ".partial-step-00000012")
    resumed = train(out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "step-00000008 at step 8" in resumed.stderr
    assert same_weights(whole, out)
    assert listing(checkpoints) == ["step-00000012", "step-00000016"]  # the next save cleared the partial


@pytest.mark.slow
def test_sigkill_inside_cleanup_leaves_no_incomplete_checkpoint_and_resume_is_exact(train, whole, tmp_path):
    out = tmp_path / "out"
    assert train(out, "cleanup", 12).returncode == -signal.SIGKILL
    checkpoints = out / "checkpoints"
    visible = [p for p in checkpoints.iterdir() if not p.name.startswith(".")]
    assert sorted(p.name for p in visible) == ["step-00000008", "step-00000012"]
    for path in visible:  # complete or invisible: the half-deleted step-4 is hidden
        assert all((path / name).is_file() for name in NEEDED), listing(path)
    hidden = [p for p in checkpoints.iterdir() if p.name.startswith(".")]
    assert [p.name for p in hidden] == [".deleting-step-00000004"]
    assert "model.safetensors" not in listing(hidden[0])
    resumed = train(out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "step-00000012 at step 12" in resumed.stderr
    assert same_weights(whole, out)
    assert listing(checkpoints) == ["step-00000012", "step-00000016"]


@pytest.mark.slow
def test_a_marked_checkpoint_missing_its_weights_is_skipped_with_a_warning(train, whole, tmp_path):
    out = tmp_path / "out"
    assert train(out, "SIGKILL", 9).returncode == -signal.SIGKILL
    (out / "checkpoints/step-00000008/model.safetensors").unlink()  # as an older seqtune's cleanup could
    resumed = train(out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "skipping checkpoint" in resumed.stderr
    assert "step-00000008: it is incomplete (no model weights)" in resumed.stderr
    assert "step-00000004 at step 4" in resumed.stderr and "Traceback" not in resumed.stderr
    assert same_weights(whole, out)


@pytest.mark.slow
def test_a_run_stopped_after_its_last_step_finishes_without_training_past_it(train, whole, tmp_path):
    out = tmp_path / "out"
    stopped = train(out, "SIGTERM", STEPS)  # the last step's checkpoint is written, the model is not
    assert stopped.returncode == 128 + signal.SIGTERM and not (out / "model.safetensors").exists()
    resumed = train(out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"at step {STEPS}" in resumed.stderr
    assert same_weights(whole, out)
    again = train(out)  # the same command once more: a finished run has nothing left to do
    assert again.returncode == 0 and f"already holds this run, finished after {STEPS} steps" in again.stderr
