"""QLoRA through the real CLI on the CPU (gloo; DeepSpeed's CPU accelerator): the adapter trained on a 4-bit
base by DDP, ZeRO-2 and ZeRO-3 equals one process's; a stopped run resumes bit-identically; the merged model
scores the held-out rows as the adapter on the 4-bit base does; DPO's reference is the 4-bit base."""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from seqtune_testing import (REPO, SEQTUNE, error_lines, load_script, logged, max_difference, stoppable_run, train_cli,
                             trained_cli)

ROWS = "data.mixture=[{source: recipes/quickstart/data/train.jsonl, count: 96}]"
QLORA = ["model.quantization={compute_dtype: float32}", "lora={r: 4, alpha: 8, dropout: 0.0, merge: true}"]
COMMON = ["train.max_steps=3", "train.per_device_batch_size=4", "train.loss_reduction=token_mean",
          "optimizer={name: sgd, lr: 0.1}", "scheduler=constant", "logging.loggers=[jsonl]", "launch.device=cpu"]


def train(recipe: str, out: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return train_cli(recipe, out, *COMMON, *overrides, env=env)


def trained(recipe: str, out: Path, *overrides: str, env: dict | None = None) -> Path:
    return trained_cli(recipe, out, *COMMON, *overrides, env=env)


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter_model.safetensors"))


def adapter_difference(want: Path, got: Path) -> float:
    a, b = adapter(want), adapter(got)
    assert a.keys() == b.keys() and a
    return max((a[key] - b[key]).abs().max().item() for key in a)


def records(out: Path) -> list[dict]:
    return logged(out)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> list[str]:
    """A saved full-precision model every run quantizes (the way a pretrained base is QLoRA-tuned)."""
    out = trained("recipes/quickstart.yaml", tmp_path_factory.mktemp("base"), ROWS, "train.max_steps=1", "eval=null")
    return [f"model.name_or_path={out}", "model.config=null", f"tokenizer.name_or_path={out}"]


@pytest.fixture(scope="module")
def stoppable(tmp_path_factory, base) -> tuple[list[str], dict]:
    """One process accumulating 2 micro-batches, a checkpoint every 2 steps, and a plugin that stops it
    once (SIGTERM after step 2) when asked; evaluated on the quickstart's held-out rows after the last step."""
    stopping, env = stoppable_run(tmp_path_factory.mktemp("plugin"))
    return [ROWS, *base, *QLORA, "train.gradient_accumulation_steps=2", *stopping], env


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, stoppable) -> Path:
    args, env = stoppable
    return trained("recipes/quickstart.yaml", tmp_path_factory.mktemp("one"), *args, env=env)


@pytest.mark.slow
def test_one_process_trains_the_adapter_of_a_4_bit_base(one_process):
    weights = adapter(one_process)
    assert weights and all(".lora_" in key for key in weights)
    assert any(value.abs().sum() > 0 for key, value in weights.items() if ".lora_B." in key)  # B starts at zero
    assert not (one_process / "model.safetensors").exists()  # the base is not the run's to save
    adapter_config = json.loads((one_process / "adapter_config.json").read_text())
    assert Path(adapter_config["base_model_name_or_path"]).is_absolute()


@pytest.mark.slow
@pytest.mark.parametrize("launch", [[], ["launch.deepspeed={zero_stage: 2}"], ["launch.deepspeed={zero_stage: 3}"]],
                         ids=["ddp", "zero2", "zero3"])
def test_two_processes_train_the_adapter_one_process_accumulating_two_trains(tmp_path, base, one_process, launch):
    """Rank r takes micro-batches r, r + 2, ...: the same rows as one process accumulating 2. Under ZeRO-3 the
    packed 4-bit weights are partitioned and gathered like every other weight (stored in fp32 here), and the
    merge dequantizes the gathered ones."""
    two = trained("recipes/quickstart.yaml", tmp_path / "two", ROWS, *base, *QLORA, "launch.num_processes=2",
                  "train.gradient_accumulation_steps=1", "eval=null", *launch)
    assert adapter_difference(one_process, two) < 1e-5
    assert max_difference(one_process / "merged", two / "merged") < 1e-5


@pytest.mark.slow
def test_a_stopped_run_resumes_bit_identically(tmp_path, stoppable, one_process):
    args, env = stoppable
    env = {**env, "STOP_ONCE": str(tmp_path / "once")}
    stopped = train("recipes/quickstart.yaml", tmp_path / "stopped", *args, env=env)
    assert stopped.returncode == 128 + 15, stopped.stderr[-3000:]
    resumed = train("recipes/quickstart.yaml", tmp_path / "stopped", *args, env=env)
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr[-3000:]
    want, got = adapter(one_process), adapter(tmp_path / "stopped")
    assert want.keys() == got.keys() and all(torch.equal(want[key], got[key]) for key in want)


@pytest.mark.slow
def test_the_merged_model_scores_the_held_out_rows_as_the_adapter_on_the_4_bit_base(one_process):
    """The run's last evaluation scores the adapter on the 4-bit base; the merged model (the base dequantized
    to the compute dtype, the adapter folded in) loads without peft or bitsandbytes and scores the same rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    on_4_bit = [r["eval_loss"] for r in records(one_process) if "eval_loss" in r][-1]
    merged = one_process / "merged"
    config = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    ask = load_script("scripts/ask")
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    held_out = ask.held_out_loss(AutoTokenizer.from_pretrained(merged), model, REPO / "recipes/quickstart/data/eval.jsonl")
    assert held_out == pytest.approx(on_4_bit, rel=1e-4)  # the issue asks for 1%; fp32 gives far closer


@pytest.mark.slow
def test_dpo_with_a_qlora_policy_uses_the_4_bit_base_as_its_reference(tmp_path, base):
    """Before the first update the policy is the base (LoRA's B is zero), so the first step's rewards are zero
    and its loss log 2 exactly when the reference (scored once and cached, as the recipe asks) is the same 4-bit
    base with the adapter disabled; after it, the policy has moved away from its reference."""
    dpo = ["data.mixture=[{source: recipes/quickstart/data/preferences.jsonl, count: 32, format: preference}]",
           "train.max_steps=2", "logging.every_steps=1", f"data.cache_dir={tmp_path / 'cache'}"]
    out = trained("recipes/quickstart-dpo.yaml", tmp_path / "dpo", *base, *QLORA, *dpo)
    first, second = records(out)[:2]
    assert first["rewards/chosen"] == first["rewards/rejected"] == 0.0
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert second["rewards/chosen"] != 0.0
    assert list((tmp_path / "cache").rglob("reference-train-*.pt"))


def test_quantization_without_lora_is_refused_before_anything_is_written(tmp_path):
    result = subprocess.run([str(SEQTUNE), "train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'out'}",
                             "model.quantization={}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    (line,) = error_lines(result.stderr)
    assert "model.quantization" in line and "lora" in line
    assert not (tmp_path / "out").exists()
