"""plugins.trackers: wandb (offline) and tensorboard, the real packages writing into tmp_path."""
from __future__ import annotations

import glob
import time
from pathlib import Path

import pytest

from plugins.trackers import tensorboard, wandb


@pytest.fixture
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "wandb-home"
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(home / "dir"), "WANDB_SILENT": "true",
                        "WANDB_CONFIG_DIR": str(home / "config"), "WANDB_CACHE_DIR": str(home / "cache"),
                        "WANDB_DATA_DIR": str(home / "data"), "WANDB_DISABLE_GIT": "true",
                        "WANDB_DISABLE_CODE": "true", "WANDB_CONSOLE": "off"}.items():
        monkeypatch.setenv(name, value)
    for name in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.mark.slow
def test_wandb_offline_writes_a_run_directory(tmp_path: Path, offline_wandb, hooks, run_info):
    out = tmp_path / "out"
    out.mkdir()
    logger = wandb(str(out), project="seqtune-tests", tags=["unit"])
    hook = hooks(logger)
    hook.seqtune_train_start(run=run_info)
    hook.seqtune_log(step=1, metrics={"loss": 1.25, "lr": 0.001})
    hook.seqtune_log(step=2, metrics={"loss": 0.875, "lr": 0.0005})
    hook.seqtune_train_end(summary={"steps": 2, "train_seconds": 0.5})

    runs = glob.glob(str(out / "wandb" / "offline-run-*"))
    assert len(runs) == 1, list(out.rglob("*"))
    records = list(Path(runs[0]).glob("run-*.wandb"))
    assert len(records) == 1
    # wandb's service process may still be writing its record when finish() returns: wait, bounded.
    deadline = time.monotonic() + 30
    while b"0.875" not in (data := records[0].read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b"loss" in data and b"0.875" in data
    assert b"tiny-run" in data  # the run name
    assert b"seqtune-tests" in data  # the project option


def test_tensorboard_writes_an_events_file_with_the_scalars(tmp_path: Path, hooks, run_info):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    logger = tensorboard(str(out), log_dir="tb")
    hook = hooks(logger)
    hook.seqtune_train_start(run=run_info)
    hook.seqtune_log(step=1, metrics={"loss": 1.5, "lr": 0.01})
    hook.seqtune_log(step=3, metrics={"loss": 0.5, "lr": 0.005})
    hook.seqtune_train_end(summary={"steps": 3})

    events = list((out / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"train/loss", "train/lr"}
    loss = acc.Scalars("train/loss")
    assert [(e.step, e.value) for e in loss] == [(1, 1.5), (3, 0.5)]
