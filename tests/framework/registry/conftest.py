"""Fixtures for plugin-loading tests: real modules and real `*.dist-info` entry points in tmp_path."""
from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """write(name, source) -> writes `name.py` into an importable folder; forgotten afterwards."""
    written: list[str] = []
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> Path:
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        written.append(name)
        importlib.invalidate_caches()
        return path

    yield write
    for name in written:
        sys.modules.pop(name, None)


@pytest.fixture
def distribution(tmp_path: Path, module_dir):
    """install(dist_name, module_name, source): a real dist-info with a `seqtune` entry point."""

    def install(dist_name: str, module_name: str, source: str, entry_name: str) -> None:
        module_dir(module_name, source)
        info = tmp_path / f"{dist_name}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[seqtune]\n{entry_name} = {module_name}\n")
        importlib.invalidate_caches()

    return install
