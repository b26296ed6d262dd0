"""The example plugin package, examples/seqtune-markdown, as a user installs it: built and installed
offline (no index, no build isolation) into a folder of its own, so that the rest of the suite, running
beside it, never sees its plugins; then listed by `seqtune plugins` with its distribution, used by a
recipe, and uninstalled."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seqtune_testing import REPO

PACKAGE = REPO / "examples/seqtune-markdown"


@pytest.fixture
def installed(tmp_path, monkeypatch):
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    done = subprocess.run([*pip, "install", "--quiet", "--no-index", "--no-build-isolation", "--no-deps",
                           "--target", str(site), str(PACKAGE)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PIP_NO_INDEX": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("COLUMNS", "200")  # `seqtune plugins` prints whole names
    yield site
    # pip uninstalls only from an environment's own site-packages: remove what the install recorded
    [record] = site.glob("seqtune_markdown-*.dist-info/RECORD")
    for line in record.read_text().splitlines():
        (site / line.split(",")[0]).unlink(missing_ok=True)
    listed = subprocess.run([str(Path(sys.executable).with_name("seqtune")), "plugins"], capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(site)})
    assert listed.returncode == 0 and "seqtune-markdown" not in listed.stdout


@pytest.mark.slow
def test_the_example_package_installs_lists_trains_and_logs(installed, seqtune, tmp_path):
    listed = seqtune("plugins")
    assert listed.returncode == 0, listed.stderr
    for family, name in (("dataset loader", "markdown_dialogues"), ("logger", "csv")):
        [line] = [line for line in listed.stdout.splitlines() if family in line and f" {name} " in line]
        assert "│ markdown " in line and "seqtune-markdown" in line  # its entry point and distribution
    out = tmp_path / "run"
    trained = seqtune("train", "examples/seqtune-markdown/example/recipe.yaml", f"output_dir={out}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "8 rows -> 8 kept" in trained.stderr
    rows = list(csv.reader((out / "metrics.csv").open()))
    assert rows[0][:2] == ["step", "loss"] and [row[0] for row in rows[1:]] == ["2", "4", "6"]


@pytest.mark.slow
def test_a_bad_dialogue_is_named_by_file_and_line(installed, seqtune, tmp_path):
    folder = tmp_path / "dialogues"
    folder.mkdir()
    (folder / "01.md").write_text("## user\nhi\n\n## bot\nhello\n")
    done = seqtune("train", "examples/seqtune-markdown/example/recipe.yaml", f"output_dir={tmp_path / 'run'}",
                   f"data.mixture=[{{source: {folder}, loader: markdown_dialogues, fraction: 1.0}}]")
    assert done.returncode == 2
    assert f"{folder / '01.md'}:4: unknown turn heading '## bot'" in done.stderr
    assert not (tmp_path / "run").exists()
