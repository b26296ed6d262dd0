"""`seqtune check --gpu`: the memory plan per GPU, and exit codes a CI job can gate on."""
from __future__ import annotations

import subprocess
import sys

import pytest

TULU = "recipes/tulu3/gemma2-2b-sft.yaml"


@pytest.mark.parametrize("gpu, code, verdict", [("3090", 1, "does not fit"), ("h100", 0, "fits"),
                                                ("32", 0, "fits"), ("30", 1, "does not fit")])
def test_the_seed_recipe_on_each_gpu(seqtune, gpu, code, verdict):
    result = seqtune("check", TULU, "--gpu", gpu)
    assert result.returncode == code, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{verdict}: 30.6 GiB of") and "max_seq_length 2,048" in last
    for part in ("weights", "gradients", "optimizer states", "activations", "logits + loss", "overhead"):
        assert part in result.stdout


def test_a_longer_max_seq_length_needs_more_memory(seqtune):
    short = seqtune("check", TULU, "--gpu", "h100", "data.max_seq_length=1024").stdout.splitlines()[-1]
    long = seqtune("check", TULU, "--gpu", "h100", "data.max_seq_length=8192").stdout.splitlines()[-1]
    gib = [float(line.split(": ")[1].split(" GiB")[0]) for line in (short, long)]
    assert gib[0] < 30.6 < gib[1]


def test_an_unknown_gpu_is_an_error_before_any_output(seqtune):
    result = seqtune("check", TULU, "--gpu", "a100")
    assert result.returncode == 2 and result.stdout == ""
    assert "did you mean one of: a100-40, a100-80?" in result.stderr


def test_planning_the_seed_recipe_needs_neither_torch_nor_a_download(repo):
    code = ("import sys; from framework.cli import app\n"
            f"try: app(['check', '{TULU}', '--gpu', '3090'])\n"
            "except SystemExit as e: assert e.code == 1, e.code\n"
            "print(sorted(m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr
