"""`seqtune check --gpu`: the memory plan per GPU, and exit codes a CI job can gate on."""
from __future__ import annotations

import subprocess
import sys

import pytest

TULU = "recipes/tulu3/gemma2-2b-sft.yaml"


@pytest.mark.parametrize("gpu, code, verdict", [("3090", 1, "does not fit"), ("h100", 0, "fits"),
                                                ("29", 0, "fits"), ("28", 1, "does not fit")])
def test_the_seed_recipe_on_each_gpu(seqtune, gpu, code, verdict):
    result = seqtune("check", TULU, "--gpu", gpu)
    assert result.returncode == code, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{verdict}: 28.3 GiB of") and "max_seq_length 2,048" in last
    for part in ("weights", "gradients", "optimizer states", "activations", "logits + loss", "overhead"):
        assert part in result.stdout


def loss_row(stdout: str) -> float:
    row = next(line for line in stdout.splitlines() if "logits + loss" in line)
    return float(row.split("│")[2].split(" GiB")[0])


@pytest.mark.slow
def test_the_loss_part_is_planned_as_the_recipes_loss_computes_it(seqtune):
    """The default chunked loss holds one chunk of logits, the trained hidden states and the output
    layer's gradient; the unchunked loss, the logits of all 2,048 tokens (open-instruct's 30.6 GiB)."""
    chunked = seqtune("check", TULU, "--gpu", "h100")
    unchunked = seqtune("check", TULU, "--gpu", "h100", "train.loss=cross_entropy")
    assert unchunked.stdout.strip().splitlines()[-1].startswith("fits: 30.6 GiB of")
    assert loss_row(unchunked.stdout) == 5.86  # 2,048 x 256,000 x 12 B
    # 131 tokens x 256,000 x 12 B + 2,048 x 2 x 2 x 2,304 B + 256,000 x 2,304 x (4 + 2) B (the fp32 sum of the
    # output layer's gradient and one chunk's, bf16 under ZeRO-2)
    assert loss_row(chunked.stdout) == round((131 * 256_000 * 12 + 2048 * 4 * 2304 + 256_000 * 2304 * 6) / 2**30, 2)
    assert "one chunk of 131 tokens" in chunked.stdout


@pytest.mark.slow
def test_a_longer_max_seq_length_needs_more_memory(seqtune):
    short = seqtune("check", TULU, "--gpu", "h100", "data.max_seq_length=1024").stdout.splitlines()[-1]
    long = seqtune("check", TULU, "--gpu", "h100", "data.max_seq_length=8192").stdout.splitlines()[-1]
    gib = [float(line.split(": ")[1].split(" GiB")[0]) for line in (short, long)]
    assert gib[0] < 28.3 < gib[1]


def test_an_unknown_gpu_is_an_error_before_any_output(seqtune):
    result = seqtune("check", TULU, "--gpu", "a100")
    assert result.returncode == 2 and result.stdout == ""
    assert "did you mean one of: a100-40, a100-80?" in result.stderr


@pytest.mark.parametrize("recipe, exit_code", [(TULU, 1), ("recipes/tulu3/gemma2-2b-sft-long-context.yaml", 0),
                                               ("recipes/llama3.1-8b-qlora.yaml", 0)])
def test_planning_the_seed_recipes_needs_neither_torch_nor_a_download(repo, recipe, exit_code):
    """The seed recipe does not fit 3090s at its length; its long-context form, split 4 ways, does, and
    so does the QLoRA recipe (bitsandbytes and peft are not imported to plan it)."""
    code = ("import sys; from framework.cli import app\n"
            f"try: app(['check', '{recipe}', '--gpu', '3090'])\n"
            f"except SystemExit as e: assert (e.code or 0) == {exit_code}, e.code\n"
            "print(sorted(m for m in ('torch', 'transformers', 'deepspeed', 'peft', 'bitsandbytes')"
            " if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr
