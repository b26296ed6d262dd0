"""scripts/gpu_smoke.sh on a machine without a GPU: it installs seqtune the way an offline node allows,
downloads nothing, writes its data, and stops after its first run's CUDA check (exit status 3).

The slow tests pretend to be such a node: a base (not venv) Python under tmp_path, its standard library
linked from this machine's, whose site-packages show this venv's packages (torch, transformers, ...) as
preinstalled, less seqtune and two that a GPU image lacks (omegaconf, datasets); those come as wheels in
SEQTUNE_WHEELS, and pip runs with no index and no configuration.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from framework.estimation.sweep import CANDIDATES
from seqtune_testing import REPO, load_script

SITE = Path(sysconfig.get_path("purelib"))  # this venv's packages: what the pretend node has preinstalled
MISSING_ON_NODES = {"omegaconf", "datasets"}  # pure Python, so this venv's copies pack back into wheels
NO_GPU = 3
CUDA_CHECK = "needs 1 CUDA GPU(s) on this machine, found 0"


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{args[:4]}: {done.stderr[-3000:]}"
    return done


def owned_only_by(names: set[str]) -> set[str]:
    """site-packages entries of the distributions `names` that no other distribution also has."""
    mine, others = set(), set()
    for dist in importlib.metadata.distributions(path=[str(SITE)]):
        tops = {f.parts[0] for f in dist.files or () if f.parts[0] != ".."}
        (mine if canonicalize_name(dist.metadata["Name"]) in names else others).update(tops)
    return mine - others


def node_python(root: Path, hide: set[str]) -> Path:
    """A system Python at root, this venv's packages less `hide` (and seqtune) preinstalled in it."""
    stdlib = Path(sysconfig.get_path("stdlib"))
    lib = root / "lib" / stdlib.name
    (lib / "site-packages").mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name != "site-packages":
            (lib / entry.name).symlink_to(entry)
    hidden = owned_only_by({canonicalize_name(name) for name in hide | {"seqtune"}})
    for entry in SITE.iterdir():
        if entry.name not in hidden:
            (lib / "site-packages" / entry.name).symlink_to(entry)
    # a copy, not a link: Python finds its prefix (stdlib, site-packages) from where its binary lies
    (root / "bin").mkdir()
    binary = Path(sys._base_executable).resolve()
    shutil.copy2(binary, root / "bin" / binary.name)
    (root / "bin" / "python3").symlink_to(binary.name)
    return root / "bin" / "python3"


def packed(name: str, out: Path) -> Path:
    """The wheel of a pure-Python distribution of this venv, packed back from its installed files."""
    dist = importlib.metadata.distribution(name)
    skip = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    files = [f for f in dist.files if f.parts[0] != ".." and "__pycache__" not in f.parts and f.name not in skip]
    info = next(f.parts[0] for f in files if f.parts[0].endswith(".dist-info"))
    wheel = out / f"{info.removesuffix('.dist-info')}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(wheel, "w") as archive:
        for f in files:
            data = f.read_binary()
            archive.writestr(str(f), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{f},sha256={digest},{len(data)}")
        archive.writestr(f"{info}/RECORD", "\n".join([*record, f"{info}/RECORD,,"]) + "\n")
    return wheel


def offline_env(**extra: str) -> dict[str, str]:
    """No index, no pip configuration, nothing of this venv on the path: only what the node has."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    path = [p for p in env["PATH"].split(os.pathsep) if Path(p).resolve() != Path(sys.executable).parent.resolve()]
    return {**env, "PATH": os.pathsep.join(path), "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1",
            "HF_HUB_OFFLINE": "1", **extra}


def smoke(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", "scripts/gpu_smoke.sh", "--out", str(tmp_path / "out"), "--only", "base",
                           "--steps", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == NO_GPU, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith(f"gpu_smoke: no CUDA GPU on this machine: stopped "
                                                           f"after the first run (base): launch.num_processes=1 "
                                                           f"{CUDA_CHECK}")
    [result] = [json.loads(line) for line in (tmp_path / "out/smoke.jsonl").read_text().splitlines()]
    assert result["run"] == "base" and CUDA_CHECK in result["error"]  # `python -m framework.cli train` ran
    return done


def where(python: Path, *modules: str) -> list[Path]:
    """Where `python` imports each module from, run outside the checkout."""
    code = f"import {', '.join(modules)}; " + "; ".join(f"print({m}.__path__[0])" for m in modules)
    return [Path(line) for line in run(python, "-c", code, cwd=python.parent).stdout.split()]


def installed_from(done: subprocess.CompletedProcess, prefix: Path) -> Path:
    """The folder gpu_smoke.py imported seqtune from (its first line), checked to be the site-packages of
    the environment at `prefix`, not the checkout."""
    line = next(line for line in done.stdout.splitlines() if line.startswith("gpu_smoke: seqtune "))
    framework = Path(line.split(" from ")[1].split(",")[0])
    assert framework == prefix / "lib" / SITE.parent.name / "site-packages/framework", line
    assert (framework / "cli/__main__.py").read_text() == (REPO / "framework/cli/__main__.py").read_text()
    return framework


@pytest.mark.slow
def test_an_active_venv_gets_a_wheel_of_the_checkout_and_the_missing_dependencies_offline(tmp_path):
    python = node_python(tmp_path / "node", hide=MISSING_ON_NODES)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in MISSING_ON_NODES:
        packed(name, wheels)
    # without pip of its own: Python 3.11's ensurepip would add setuptools 65, too old to build seqtune,
    # whereas a venv of the nodes' Python 3.12 gets no setuptools and sees the node's
    venv = tmp_path / "venv"
    run(python, "-m", "venv", "--system-site-packages", "--without-pip", venv)
    env = offline_env(VIRTUAL_ENV=str(venv), SEQTUNE_WHEELS=str(wheels))
    done = smoke(tmp_path, {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}"})

    framework = installed_from(done, venv)
    omegaconf, datasets, torch = where(venv / "bin/python", "omegaconf", "datasets", "torch")
    assert omegaconf.parent == datasets.parent == framework.parent  # installed into the venv, from the wheels
    assert torch.parent == tmp_path / "node/lib" / SITE.parent.name / "site-packages"  # the node's, reused
    assert "installing seqtune-0.1.0-py3-none-any.whl into" in done.stderr


@pytest.mark.slow
def test_a_system_python_that_refuses_pip_gets_a_venv_over_its_packages(tmp_path):
    # without setuptools, seqtune's wheel cannot be built on this node: the wheelhouse's is used; torch
    # needs setuptools too, so it comes from the wheelhouse with the rest
    missing = MISSING_ON_NODES | {"setuptools"}
    python = node_python(tmp_path / "node", hide=missing)
    stdlib = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))").stdout.strip())
    (stdlib / "EXTERNALLY-MANAGED").write_text("[externally-managed]\nError=this node's packages come from its image\n")
    refused = subprocess.run([python, "-m", "pip", "install", "--no-index", "omegaconf"], capture_output=True,
                             text=True, env=offline_env())
    assert refused.returncode and "externally-managed-environment" in refused.stderr
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in missing:
        packed(name, wheels)
    load_script("scripts/wheelhouse").own_wheel(wheels, isolated=False)
    venv = tmp_path / "smoke-venv"
    done = smoke(tmp_path, offline_env(PYTHON=str(python), SEQTUNE_WHEELS=str(wheels), SEQTUNE_SMOKE_VENV=str(venv)))

    assert "making" in done.stderr and "with --system-site-packages" in done.stderr
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    assert f"installing {wheels / 'seqtune-0.1.0-py3-none-any.whl'} instead" in done.stderr
    framework = installed_from(done, venv)
    omegaconf, torch = where(venv / "bin/python", "omegaconf", "torch")
    assert omegaconf.parent == framework.parent and torch.parent == stdlib / "site-packages"
    assert not list((stdlib / "site-packages").glob("seqtune*"))  # nothing went into the system Python


@pytest.mark.slow
def test_a_system_python_that_has_every_dependency_needs_no_wheelhouse(tmp_path):
    python = node_python(tmp_path / "node", hide=set())  # pip may install here: no marker, writable
    done = smoke(tmp_path, offline_env(PYTHON=str(python)))
    assert "making" not in done.stderr
    installed_from(done, tmp_path / "node")


@pytest.mark.slow
def test_a_development_install_of_the_checkout_is_kept(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PIP_NO_INDEX": "1", "HF_HUB_OFFLINE": "1"}
    done = smoke(tmp_path, env)
    assert "seqtune is this checkout, installed for development: kept" in done.stderr
    assert f"seqtune 0.1.0 from {REPO / 'framework'}," in done.stdout
    assert len((tmp_path / "out/data.jsonl").read_text().splitlines()) == 6000
    assert "| base | 4096 | bfd | auto | false | chunked_cross_entropy |  | failed" in \
        (tmp_path / "out/smoke.md").read_text()


def test_every_smoke_run_has_a_memory_plan(tmp_path, monkeypatch):
    """The plan each run is compared with: the random-init model's vocabulary comes from the tokenizer."""
    smoke = load_script("scripts/gpu_smoke")
    monkeypatch.chdir(REPO)
    plans = {name: smoke.planned_gib(smoke.overrides(name, changes, tmp_path, 2))
             for name, changes in smoke.variants().items()}
    assert plans["len-2048"] < plans["base"] < plans["len-8192"]
    assert plans["checkpointing"] < plans["base"]


def test_the_capped_runs_straddle_what_the_plan_says_fits_24_gib(tmp_path, monkeypatch):
    smoke = load_script("scripts/gpu_smoke")
    monkeypatch.chdir(REPO)
    runs = smoke.capped(tmp_path, 2)
    assert len(runs) == 2 and all(changes["launch.gpu_memory_gib"] == "24" for changes in runs.values())
    fits, next_up = (smoke.planned_gib(smoke.overrides(name, changes, tmp_path, 2)) for name, changes in runs.items())
    assert fits <= 24 < next_up
    lengths = [int(changes["data.max_seq_length"]) for changes in runs.values()]
    assert CANDIDATES.index(lengths[1]) == CANDIDATES.index(lengths[0]) + 1
