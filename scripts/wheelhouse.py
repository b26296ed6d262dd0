"""Build a folder of wheels that installs seqtune on an offline machine: `pip install --no-index`.

    python scripts/wheelhouse.py OUT [--extras deepspeed] [--python 3.12]
        [--platform manylinux_2_28_x86_64 ...] [--have torch transformers ... | --have-freeze FILE]

For a GPU node without network: run this where pip reaches an index, copy OUT over, and there run
`pip install --no-index --find-links OUT 'seqtune[deepspeed]'` (where the system Python refuses pip, PEP
668, in a venv made with --system-site-packages), or `SEQTUNE_WHEELS=OUT bash scripts/gpu_smoke.sh`, which
does that itself. The folder holds seqtune's own wheel
and every package that seqtune and the chosen extras need, for the target Python and platform, except
what the target already has: `--have` names (each taken with whatever it needs itself) or
`--have-freeze` (a `pip freeze` of the target). The default `--have` is a typical cluster GPU image:
torch with CUDA, transformers, accelerate, peft, rich, typer, pluggy, pyarrow, pandas, tensorboard.

Wheels come from the index as binaries built for the target (`pip download --only-binary`), one
package at a time, following each wheel's own Requires-Dist under the target's markers. DeepSpeed is
published only as a source distribution: it is built here into a pure-Python wheel without compiled
ops (DS_BUILD_OPS=0; its JIT builds the ops it needs on the GPU machine), against this machine's torch.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
TYPICAL_GPU_IMAGE = ("torch", "transformers", "accelerate", "peft", "rich", "typer", "pluggy", "pyarrow", "pandas",
                     "tensorboard", "numpy", "safetensors", "tokenizers", "huggingface-hub", "pyyaml")
SOURCE_ONLY = {"deepspeed"}  # no wheels on the index: built here
SOURCES = ("pyproject.toml", "README.md", "framework", "plugins")  # what seqtune's wheel is built from


def target_environment(python: str) -> dict[str, str]:
    """Marker values of a Linux x86_64 CPython `python` (e.g. "3.12")."""
    return {"python_version": python, "python_full_version": f"{python}.0", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
            "platform_machine": "x86_64", "os_name": "posix", "extra": ""}


def needed(requirement: Requirement, env: dict[str, str], extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**env, "extra": extra}) for extra in extras | {""})


def requirements_of(wheel: Path) -> list[Requirement]:
    """A wheel's Requires-Dist lines."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(name).decode().splitlines()
    return [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]


def fetch(requirement: Requirement, out: Path, args: argparse.Namespace) -> Path:
    """One package's wheel for the target, downloaded (or, for sdist-only packages, built here)."""
    before = set(out.glob("*.whl"))
    spec = str(Requirement(f"{requirement.name}{requirement.specifier}"))
    if canonicalize_name(requirement.name) in SOURCE_ONLY:
        with tempfile.TemporaryDirectory() as tmp:
            pip("download", "--no-deps", "--no-binary", ":all:", "-d", tmp, spec)
            sdist = next(Path(tmp).iterdir())
            env = {**os.environ, "DS_BUILD_OPS": "0"}
            pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(sdist), env=env)
    else:
        platforms = [arg for p in args.platform for arg in ("--platform", p)]
        pip("download", "--no-deps", "--only-binary", ":all:", "--python-version", args.python,
            "--implementation", "cp", *platforms, "-d", str(out), spec)
    new = set(out.glob("*.whl")) - before
    return next(iter(new)) if new else _existing(out, requirement.name)


def _existing(out: Path, name: str) -> Path:
    wanted = canonicalize_name(name)
    return next(w for w in out.glob("*.whl") if canonicalize_name(w.name.split("-")[0]) == wanted)


def pip(*args: str, env: dict | None = None) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "-q", *args], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"error: pip {' '.join(args[:1])} failed for {args[-1]}:\n{done.stderr[-2000:]}")


def own_wheel(out: Path, isolated: bool = True) -> Path:
    """seqtune's wheel, built from a copy of what this checkout packages: an in-tree build would also
    pack modules an older build left in build/. `isolated=False` builds with this Python's setuptools."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in SOURCES:
            source = REPO / name
            if source.is_dir():
                shutil.copytree(source, Path(tmp) / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, tmp)
        pip("wheel", "--no-deps", *([] if isolated else ["--no-build-isolation"]), "-w", str(out), tmp)
    return _existing(out, "seqtune")


def build(out: Path, args: argparse.Namespace, have: set[str]) -> list[Path]:
    """seqtune's wheel and the closure of what it needs, leaving out `have` and what they need."""
    out.mkdir(parents=True, exist_ok=True)
    own = own_wheel(out)
    env, queue, seen, wheels = target_environment(args.python), [(own, set(args.extras))], set(have), [own]
    while queue:
        wheel, extras = queue.pop()
        for requirement in requirements_of(wheel):
            name = canonicalize_name(requirement.name)
            if name in seen or not needed(requirement, env, extras):
                continue
            seen.add(name)
            found = fetch(requirement, out, args)
            print(f"  {found.name} ({found.stat().st_size / 1e6:.1f} MB)", flush=True)
            wheels.append(found)
            queue.append((found, set(requirement.extras)))
    return wheels


def have_set(args: argparse.Namespace) -> set[str]:
    if args.have_freeze:
        lines = Path(args.have_freeze).read_text().splitlines()
        return {canonicalize_name(line.split("==")[0].split(" @ ")[0].strip()) for line in lines
                if line.strip() and not line.startswith(("#", "-e"))}
    return {canonicalize_name(name) for name in args.have}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--extras", nargs="*", default=["deepspeed"])
    parser.add_argument("--python", default="3.12")
    parser.add_argument("--platform", nargs="+", default=["manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
                                                          "manylinux2014_x86_64", "linux_x86_64"])
    parser.add_argument("--have", nargs="*", default=list(TYPICAL_GPU_IMAGE))
    parser.add_argument("--have-freeze", help="a `pip freeze` of the target instead of --have")
    args = parser.parse_args()
    print(f"wheels for CPython {args.python} on {args.platform[0]} into {args.out}", flush=True)
    wheels = build(args.out, args, have_set(args))
    total = sum(w.stat().st_size for w in wheels) / 1e6
    print(f"{len(wheels)} wheels, {total:.1f} MB: pip install --no-index --find-links {args.out} "
          f"'seqtune{'[' + ','.join(args.extras) + ']' if args.extras else ''}'")


if __name__ == "__main__":
    main()
