"""`seqtune check --samples N`: the data as training sees it, before anything trains."""
from __future__ import annotations


def test_samples_show_trained_text_cuts_and_the_runs_size(seqtune, tmp_path):
    result = seqtune("check", "recipes/quickstart.yaml", "--samples", "3", "data.max_seq_length=24",
                     "train.gradient_accumulation_steps=2", f"output_dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("sample ") == 3 and "✂ [cut here:" in out
    assert "effective batch: 32 rows (16 x 2 accumulation x 1 processes)" in out
    assert "optimizer steps:" in out and "warmup steps:" in out and "packing efficiency:" in out
    assert "truncated" in result.stderr  # the truncation report, from preprocessing
    assert not (tmp_path / "out").exists()  # a check writes nothing to output_dir


def test_without_samples_check_stays_static(repo):
    import subprocess
    import sys

    code = ("import sys; from framework.cli import app\n"
            "try: app(['check', 'recipes/quickstart.yaml'])\n"
            "except SystemExit as e: assert e.code in (0, None)\n"
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr
