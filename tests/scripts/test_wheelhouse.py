"""scripts/wheelhouse.py: a folder of wheels that installs seqtune with --no-index where only torch is.

The first test is slow and online: it downloads the wheels from the package index (as a user does before
going offline), then proves the offline half: a fresh venv holding only torch installs seqtune[deepspeed]
from the folder with --no-index and trains the quickstart recipe.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from fnmatch import fnmatch
from pathlib import Path

import pytest

from seqtune_testing import REPO, load_script

pytestmark = pytest.mark.slow


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=1200, **kwargs)
    assert done.returncode == 0, f"{args[:4]}: {done.stderr[-3000:]}"
    return done


def test_a_venv_with_only_torch_installs_from_the_wheelhouse_offline_and_trains(tmp_path):
    import torch

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", f"torch=={torch.__version__.split('+')[0]}")
    freeze = tmp_path / "freeze.txt"
    freeze.write_text(run(python, "-m", "pip", "freeze").stdout)

    wheels = tmp_path / "wheels"
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    built = run(sys.executable, REPO / "scripts/wheelhouse.py", wheels, "--python", python_version,
                "--have-freeze", freeze).stdout
    assert "torch" not in {w.name.split("-")[0] for w in wheels.glob("*.whl")}  # the target has it
    assert any(w.name.startswith("deepspeed-") and w.name.endswith("py3-none-any.whl") for w in wheels.glob("*.whl"))

    # PIP_* variables of this machine (a find-links folder) would let pip look beyond the wheelhouse
    offline = {**{k: v for k, v in os.environ.items() if not k.startswith("PIP_")}, "PIP_NO_INDEX": "1",
               "PIP_CONFIG_FILE": os.devnull}
    run(python, "-m", "pip", "install", "-q", "--no-index", "--find-links", wheels, "seqtune[deepspeed]", env=offline)
    out = tmp_path / "out"
    run(venv / "bin" / "seqtune", "train", "recipes/quickstart.yaml", f"output_dir={out}", "train.max_steps=3",
        "logging.loggers=[jsonl]", cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["summary"]["steps"] == 3
    assert "wheels" in built


def test_seqtunes_wheel_holds_the_checkouts_files_and_nothing_an_older_build_left(tmp_path, monkeypatch):
    """An in-tree build packs whatever lies in build/lib; the wheel is built from a clean copy instead."""
    wheelhouse = load_script("scripts/wheelhouse")
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO, checkout, ignore=lambda folder, names: [n for n in names if Path(folder) == REPO
                                                                   and n not in wheelhouse.SOURCES])
    (checkout / "build/lib/framework").mkdir(parents=True)
    (checkout / "build/lib/framework/removed_module.py").write_text("gone = True\n")
    monkeypatch.setattr(wheelhouse, "REPO", checkout)

    wheel = wheelhouse.own_wheel(tmp_path / "wheels", isolated=False)  # this venv's setuptools: offline
    packed = {name for name in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in name}
    data = ("plugins/chat_templates/*.jinja", "framework/launch/ds_configs/*.json",
            "framework/estimation/model_configs/*.json")  # pyproject.toml's package-data
    files = [f.relative_to(checkout).as_posix() for top in ("framework", "plugins") for f in (checkout / top).rglob("*")
             if f.is_file() and "__pycache__" not in f.parts]
    assert packed == {f for f in files if f.endswith(".py") or any(fnmatch(f, pattern) for pattern in data)}
    assert "framework/cli/__main__.py" in packed  # `python -m framework.cli`, how runs and workers start
