"""DPO runs through the real CLI on the CPU: the cached reference equals the live one (a frozen copy, or
the LoRA model with its adapter off), two processes equal one with doubled accumulation, and a run
killed after a checkpoint resumes to the same weights."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def write_pairs(path, count: int = 48) -> None:
    """Quickstart conversations as chosen, the same with a corrupted final answer as rejected."""
    from seqtune_testing import REPO

    lines = (REPO / "recipes/quickstart/data/train.jsonl").read_text().splitlines()
    with path.open("w") as out:
        for line in lines[:count]:
            messages = json.loads(line)["messages"]
            answer = messages[-1]["content"]
            wrong = answer[::-1] if answer[::-1] != answer else answer + " x"
            out.write(json.dumps({"chosen": messages,
                                  "rejected": messages[:-1] + [{"role": "assistant", "content": wrong}]}) + "\n")


@pytest.fixture
def dpo_run(seqtune, tmp_path):
    write_pairs(tmp_path / "pairs.jsonl")

    def run(name: str, *extra: str):
        done = seqtune("train", "recipes/quickstart.yaml", f"output_dir={tmp_path / name}",
                       f"data.mixture=[{{source: {tmp_path / 'pairs.jsonl'}, fraction: 1.0, format: preference}}]",
                       "data.packing=bfd", "objective={name: dpo, beta: 0.5}", "eval=null", "train.per_device_batch_size=4",
                       "train.max_steps=4", "train.loss_reduction=token_mean", "optimizer={name: sgd, lr: 0.5}",
                       "scheduler=constant", "logging.every_steps=1", "logging.loggers=[jsonl]",
                       f"data.cache_dir={tmp_path / 'cache'}", *extra, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        metrics = [record for record in records if "loss" in record]  # the last line is the run summary
        return done, metrics

    return run


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_the_cached_reference_trains_exactly_as_the_live_frozen_copy(dpo_run, tmp_path):
    cached, cached_metrics = dpo_run("cached", "objective.reference=cached")
    assert "reference log-probabilities" in cached.stdout + cached.stderr
    live, live_metrics = dpo_run("live", "objective.reference=live")
    assert [m["loss"] for m in cached_metrics] == pytest.approx([m["loss"] for m in live_metrics], abs=1e-6)
    assert cached_metrics[0]["rewards/accuracy"] == 0  # the first step: policy = reference, every pair ties (counts 0)
    assert cached_metrics[0]["loss"] == pytest.approx(0.6931472, abs=1e-6)  # -log sigmoid(0)
    want, got = weights(tmp_path / "live"), weights(tmp_path / "cached")
    assert max((want[k] - got[k]).abs().max().item() for k in want) < 1e-6
    again, _ = dpo_run("again", "objective.reference=cached")  # the second run reads the cache
    assert "reference log-probabilities (train): cached" in again.stdout + again.stderr
    assert "train.loss" not in again.stderr  # no warning about a key the recipe does not set


def test_with_lora_the_reference_is_the_model_with_its_adapter_off(dpo_run, tmp_path):
    lora = ["lora={r: 4, alpha: 8, dropout: 0.0}", "optimizer={name: sgd, lr: 2.0}"]
    _, cached = dpo_run("cached", "objective.reference=cached", *lora)
    _, live = dpo_run("live", "objective.reference=live", *lora)
    assert [m["loss"] for m in cached] == pytest.approx([m["loss"] for m in live], abs=1e-6)
    assert cached[-1]["rewards/margin"] != 0  # the adapter trained, the reference stayed put


def test_two_processes_equal_one_process_with_doubled_accumulation(dpo_run, tmp_path):
    _, two = dpo_run("two", "launch.num_processes=2", "train.gradient_accumulation_steps=1")
    _, one = dpo_run("one", "train.gradient_accumulation_steps=2")
    want, got = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert max((want[k] - got[k]).abs().max().item() for k in want) < 1e-5
    assert [m["rewards/accuracy"] for m in one] == pytest.approx([m["rewards/accuracy"] for m in two])


def test_under_zero3_a_sharded_frozen_copy_trains_as_the_cached_reference_and_as_zero2(dpo_run, seqtune, tmp_path):
    """Two processes from saved weights (ZeRO-3 initialises a model built from a config differently): the live
    reference under ZeRO-3 is a partitioned engine of its own beside the trained one, and trains to the same
    losses and weights as the cached reference, which trains as ZeRO-2 does."""
    base = tmp_path / "base"
    made = seqtune("train", "recipes/quickstart.yaml", f"output_dir={base}", "train.max_steps=1",
                   "logging.loggers=[jsonl]", "data.mixture=[{source: recipes/quickstart/data/train.jsonl, count: 16}]")
    assert made.returncode == 0, made.stderr[-2000:]
    two = ["launch.num_processes=2", f"model.name_or_path={base}", "model.config=null", "train.max_steps=3"]
    _, live = dpo_run("live", "objective.reference=live", "launch.deepspeed={zero_stage: 3}", *two)
    _, cached = dpo_run("cached", "objective.reference=cached", "launch.deepspeed={zero_stage: 3}", *two)
    _, zero2 = dpo_run("zero2", "objective.reference=cached", "launch.deepspeed={zero_stage: 2}", *two)
    assert [m["loss"] for m in live] == pytest.approx([m["loss"] for m in cached], abs=1e-6)
    assert [m["loss"] for m in cached] == pytest.approx([m["loss"] for m in zero2], abs=1e-5)
    assert live[0]["loss"] == pytest.approx(0.6931472, abs=1e-6) and live[-1]["loss"] != live[0]["loss"]
    want, got = weights(tmp_path / "cached"), weights(tmp_path / "live")
    assert all(torch.allclose(want[name], got[name], atol=1e-6) for name in want)


def test_held_out_pairs_are_scored_with_the_same_objective_and_either_reference(dpo_run, tmp_path):
    held_out = ["eval={split: 8}", "data.packing=none"]
    _, cached = dpo_run("cached", "objective.reference=cached", *held_out)
    _, live = dpo_run("live", "objective.reference=live", *held_out)
    records = [json.loads(line) for line in (tmp_path / "cached/metrics.jsonl").read_text().splitlines()]
    [evaluation] = [r for r in records if "eval_loss" in r]
    assert {"eval_rewards/accuracy", "eval_rewards/margin", "eval_logps/chosen"} <= set(evaluation)
    assert "eval_perplexity" not in evaluation  # a loss per pair has no perplexity
    assert len(json.loads((tmp_path / "cached/eval_split.json").read_text())) == 8
    live_records = [json.loads(line) for line in (tmp_path / "live/metrics.jsonl").read_text().splitlines()]
    [live_evaluation] = [r for r in live_records if "eval_loss" in r]
    assert evaluation["eval_loss"] == pytest.approx(live_evaluation["eval_loss"], abs=1e-6)
