"""Sequence-parallel runs through the real CLI on the CPU (gloo; DeepSpeed's CPU accelerator): after 3
optimizer steps their weights, evaluations and token counts equal the unsplit run's, under DDP and each
ZeRO stage, for SFT and DPO (cached reference), with 2 and 4 processes; a resumed run is bit-identical."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

from seqtune_testing import logged, max_difference, stoppable_run, train_cli, trained_cli

ROWS = "data.mixture=[{source: recipes/quickstart/data/train.jsonl, count: 96}]"
COMMON = ["train.max_steps=3", "train.per_device_batch_size=4", "train.loss_reduction=token_mean",
          "optimizer={name: sgd, lr: 0.5}", "scheduler=constant", "logging.loggers=[jsonl]", "launch.device=cpu",
          "data.packing=bfd", "eval.every_steps=2"]
SPLIT = ["launch.num_processes=2", "launch.sequence_parallel=2"]


def train(recipe: str, out: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return train_cli(recipe, out, *COMMON, *overrides, env=env)


def trained(recipe: str, out: Path, *overrides: str, env: dict | None = None) -> Path:
    return trained_cli(recipe, out, *COMMON, *overrides, env=env)


def records(out: Path) -> list[dict]:
    return logged(out)


def evaluations(out: Path) -> list[float]:
    return [r["eval_loss"] for r in records(out) if "eval_loss" in r]


def summary(out: Path) -> dict:
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["summary"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> list[str]:
    """A saved model every run starts from (ZeRO-3 initialises a model from a config differently)."""
    out = trained("recipes/quickstart.yaml", tmp_path_factory.mktemp("base"), ROWS, "train.max_steps=1")
    return [f"model.name_or_path={out}", "model.config=null", f"tokenizer.name_or_path={out}"]


@pytest.fixture(scope="module")
def unsplit(tmp_path_factory, base) -> Path:
    """One process accumulating 2 micro-batches: what one group of any size sees."""
    return trained("recipes/quickstart.yaml", tmp_path_factory.mktemp("unsplit"), ROWS, *base,
                   "train.gradient_accumulation_steps=2")


@pytest.fixture(scope="module")
def stoppable(tmp_path_factory, base) -> tuple[list[str], dict]:
    """The split run's arguments, with a plugin that stops it once (SIGTERM after step 2) when asked."""
    stopping, env = stoppable_run(tmp_path_factory.mktemp("plugin"))
    return [ROWS, *base, *SPLIT, "train.gradient_accumulation_steps=2", *stopping], env


@pytest.fixture(scope="module")
def split_ddp(tmp_path_factory, stoppable) -> Path:
    """Two DDP processes sharing each sequence, uninterrupted."""
    args, env = stoppable
    return trained("recipes/quickstart.yaml", tmp_path_factory.mktemp("split"), *args, env=env)


def same_run(unsplit: Path, split: Path) -> None:
    assert max_difference(unsplit, split) < 1e-5
    assert evaluations(split) == pytest.approx(evaluations(unsplit), rel=1e-5)
    want, got = summary(unsplit), summary(split)  # every token counted once, not once per rank of a group
    assert (got["tokens"], got["trainable_tokens"]) == (want["tokens"], want["trainable_tokens"])
    assert got["final_loss"] == pytest.approx(want["final_loss"], rel=1e-5)


@pytest.mark.slow
def test_two_ddp_processes_sharing_each_sequence_train_like_one_process(split_ddp, unsplit):
    same_run(unsplit, split_ddp)


@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_two_zero_processes_sharing_each_sequence_train_like_one_process(tmp_path, base, unsplit, zero):
    split = trained("recipes/quickstart.yaml", tmp_path / "split", ROWS, *base, *SPLIT,
                    f"launch.deepspeed={{zero_stage: {zero}}}", "train.gradient_accumulation_steps=2")
    same_run(unsplit, split)


@pytest.mark.slow
def test_four_processes_in_two_groups_train_like_one_process_accumulating_two(tmp_path, base, unsplit):
    """Data parallelism over the groups: group g takes micro-batches g, g + 2, ... as a rank would."""
    split = trained("recipes/quickstart.yaml", tmp_path / "split", ROWS, *base, "launch.num_processes=4",
                    "launch.sequence_parallel=2")
    same_run(unsplit, split)


@pytest.mark.slow
def test_dpo_split_under_zero1_equals_the_unsplit_run_with_its_cached_reference(tmp_path, base):
    """Each sequence's log-probability summed over the group, the reference table scored by the groups."""
    dpo = ["data.mixture=[{source: recipes/quickstart/data/preferences.jsonl, count: 48, format: preference}]",
           "train.per_device_batch_size=4", "train.gradient_accumulation_steps=2", "eval=null",
           f"data.cache_dir={tmp_path / 'cache'}"]
    unsplit = trained("recipes/quickstart-dpo.yaml", tmp_path / "unsplit", *base, *dpo)
    split = trained("recipes/quickstart-dpo.yaml", tmp_path / "split", *base, *dpo, *SPLIT,
                    "launch.deepspeed={zero_stage: 1}")
    assert max_difference(unsplit, split) < 1e-5
    for want, got in zip(records(unsplit), records(split)):
        for key in ("loss", "rewards/accuracy", "rewards/margin", "logps/chosen"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    assert len(list((tmp_path / "cache").rglob("reference-train-*.pt"))) == 2  # the split run keys its own


@pytest.mark.slow
def test_a_stopped_split_run_resumes_bit_identically(tmp_path, stoppable, split_ddp):
    args, env = stoppable
    env = {**env, "STOP_ONCE": str(tmp_path / "once")}
    stopped = train("recipes/quickstart.yaml", tmp_path / "stopped", *args, env=env)
    assert stopped.returncode == 128 + 15, stopped.stderr[-3000:]
    resumed = train("recipes/quickstart.yaml", tmp_path / "stopped", *args, env=env)
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout + resumed.stderr, resumed.stderr[-3000:]
    want, got = load_file(str(split_ddp / "model.safetensors")), load_file(str(tmp_path / "stopped/model.safetensors"))
    assert all((want[k] == got[k]).all() for k in want)
