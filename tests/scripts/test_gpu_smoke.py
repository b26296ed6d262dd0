"""scripts/gpu_smoke.sh on a machine without a GPU: it installs nothing (seqtune imports), downloads
nothing, writes its data, and stops at its first run's CUDA check with the reason in its table."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from framework.estimation.sweep import CANDIDATES
from seqtune_testing import REPO


@pytest.mark.slow
def test_the_smoke_runs_offline_up_to_the_first_cuda_call(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PIP_NO_INDEX": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(["bash", "scripts/gpu_smoke.sh", "--out", str(tmp_path), "--only", "base", "--steps", "2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-2000:]
    assert len((tmp_path / "data.jsonl").read_text().splitlines()) == 6000
    [result] = [json.loads(line) for line in (tmp_path / "smoke.jsonl").read_text().splitlines()]
    assert result["run"] == "base" and "needs 1 CUDA GPU(s) on this machine, found 0" in result["error"]
    assert "| base | 4096 | bfd | auto | false | chunked_cross_entropy |  | failed" in (tmp_path / "smoke.md").read_text()


def test_every_smoke_run_has_a_memory_plan(tmp_path, monkeypatch):
    """The plan each run is compared with: the random-init model's vocabulary comes from the tokenizer."""
    from seqtune_testing import load_script

    smoke = load_script("scripts/gpu_smoke")
    monkeypatch.chdir(REPO)
    plans = {name: smoke.planned_gib(smoke.overrides(name, changes, tmp_path, 2))
             for name, changes in smoke.variants().items()}
    assert plans["len-2048"] < plans["base"] < plans["len-8192"]
    assert plans["checkpointing"] < plans["base"]


def test_the_capped_runs_straddle_what_the_plan_says_fits_24_gib(tmp_path, monkeypatch):
    from seqtune_testing import load_script

    smoke = load_script("scripts/gpu_smoke")
    monkeypatch.chdir(REPO)
    runs = smoke.capped(tmp_path, 2)
    assert len(runs) == 2 and all(changes["launch.gpu_memory_gib"] == "24" for changes in runs.values())
    fits, next_up = (smoke.planned_gib(smoke.overrides(name, changes, tmp_path, 2)) for name, changes in runs.items())
    assert fits <= 24 < next_up
    lengths = [int(changes["data.max_seq_length"]) for changes in runs.values()]
    assert CANDIDATES.index(lengths[1]) == CANDIDATES.index(lengths[0]) + 1
