"""Checkpoints and resume through the real CLI: SIGKILL, SIGTERM, a non-finite loss.

Faults are injected by a plugin module (the recipe's `plugins:` list) that implements lifecycle
hooks, so the engine runs unmodified: it kills its own process with a real signal at a chosen
step, and records every micro-batch's rows for the data-order audit.
"""
from __future__ import annotations

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

PLUGIN = '''
import json, os, signal
from framework import hookimpl

@hookimpl
def seqtune_micro_batch(step, pieces):
    with open(os.environ["AUDIT"], "a") as out:
        out.write(json.dumps([step, pieces]) + "\\n")

@hookimpl
def seqtune_step_end(step):
    if step == int(os.environ.get("FAULT_AT", "0")):
        os.kill(os.getpid(), getattr(signal, os.environ["FAULT_SIGNAL"]))
'''
STEPS = 24
COMMON = [f"train.max_steps={STEPS}", "train.per_device_batch_size=8", "train.gradient_accumulation_steps=2",
          "data.mixture=[{source: recipes/quickstart/data/train.jsonl, count: 160}]", "checkpoint.every=5",
          "logging.every_steps=1", "logging.loggers=[jsonl]", "plugins=[fault_plugin]"]


@pytest.fixture
def run(seqtune, tmp_path, monkeypatch):
    (tmp_path / "fault_plugin.py").write_text(PLUGIN)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))

    def _run(name: str, *extra: str, fault_at: int = 0, fault: str = "SIGKILL"):
        monkeypatch.setenv("AUDIT", str(tmp_path / f"{name}.audit"))
        monkeypatch.setenv("FAULT_AT", str(fault_at))
        monkeypatch.setenv("FAULT_SIGNAL", fault)
        return seqtune("train", "recipes/quickstart.yaml", f"output_dir={tmp_path / name}", *COMMON, *extra)

    return _run


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def audit(path) -> dict[int, list]:
    """step -> the micro-batches it trained (the last record of a step wins: a resumed run redoes it)."""
    steps: dict[int, list] = {}
    for line in path.read_text().splitlines():
        step, pieces = json.loads(line)
        steps.setdefault(step, []).append(pieces)
    return steps


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_ends_with_identical_weights(run, tmp_path):
    whole = run("whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = run("resumed", fault_at=13, fault="SIGKILL")
    assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (tmp_path / "resumed/checkpoints").iterdir()) == ["step-00000005", "step-00000010"]
    first_audit = audit(tmp_path / "resumed.audit")
    (tmp_path / "resumed.audit").unlink()
    resumed = run("resumed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr and "step 10" in resumed.stderr

    want, got = weights(tmp_path / "whole"), weights(tmp_path / "resumed")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    # Every step's rows are the uninterrupted run's rows: steps 1-10 from the killed run's record,
    # 11-24 from the resumed run's; so every sample was seen as often as without the crash.
    reference, second = audit(tmp_path / "whole.audit"), audit(tmp_path / "resumed.audit")
    assert sorted(second) == list(range(11, STEPS + 1))
    combined = {**{s: first_audit[s] for s in range(1, 11)}, **second}
    assert combined == reference
    # The metrics record continues where the checkpoint left off.
    steps = [json.loads(line).get("step") for line in (tmp_path / "resumed/metrics.jsonl").read_text().splitlines()]
    assert steps[-1] is None and steps[-2] == STEPS


@pytest.mark.slow
def test_sigterm_finishes_the_step_checkpoints_and_exits_nonzero_then_resumes_exactly(run, tmp_path):
    whole = run("whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    stopped = run("stopped", fault_at=7, fault="SIGTERM")
    assert stopped.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM after step 7" in stopped.stderr and "Traceback" not in stopped.stderr
    state = json.loads((tmp_path / "stopped/checkpoints/step-00000007/trainer_state.json").read_text())
    assert state["step"] == 7
    first_session = state["totals"]["train_seconds"]  # the checkpoint carries the time, as it does the tokens
    assert first_session > 0
    resumed = run("stopped")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    want, got = weights(tmp_path / "whole"), weights(tmp_path / "stopped")
    assert all(torch.equal(want[k], got[k]) for k in want)
    # The summary's and the card's train time count both sessions: the first's, then at least the
    # second's from its first logged step (8) to its last (24).
    records = [json.loads(line) for line in (tmp_path / "stopped/metrics.jsonl").read_text().splitlines()]
    second = {r["step"]: r["time"] for r in records[7:] if "step" in r}
    summary = records[-1]["summary"]
    assert summary["train_seconds"] >= first_session + second[STEPS] - second[8]
    assert summary["tokens"] == json.loads((tmp_path / "whole/metrics.jsonl").read_text().splitlines()[-1])[
        "summary"]["tokens"]
    card = (tmp_path / "stopped/README.md").read_text()
    shown = float(card.split("| train time | ")[1].split(" s")[0].replace(",", ""))
    assert abs(shown - summary["train_seconds"]) < 0.1


@pytest.mark.slow
def test_a_partial_checkpoint_is_invisible_and_resume_never_starts_over(run, tmp_path):
    run("out", fault_at=12, fault="SIGKILL")
    checkpoints = tmp_path / "out/checkpoints"
    (checkpoints / "step-00000010" / "trainer_state.json").unlink()  # as if killed mid-write
    (checkpoints / ".partial-step-00000011").mkdir()
    resumed = run("out")
    assert resumed.returncode == 0 and "step-00000005 at step 5" in resumed.stderr
    fresh = run("out", "checkpoint.resume=never")
    assert fresh.returncode == 0 and "resuming" not in fresh.stderr


@pytest.mark.slow
def test_resume_with_other_batch_settings_is_refused(run, tmp_path):
    run("out", fault_at=6, fault="SIGKILL")
    other = run("out", "train.per_device_batch_size=4")
    assert other.returncode == 2
    assert "holds another run (batch differs)" in other.stderr and "--overwrite" in other.stderr
    # Named explicitly from a fresh output_dir, its checkpoint is refused too.
    named = run("fresh", f"checkpoint.resume={tmp_path / 'out/checkpoints/step-00000005'}",
                "train.per_device_batch_size=4")
    assert named.returncode == 2 and "belongs to another run (batch differs)" in named.stderr
    assert "cannot continue this run exactly" in named.stderr and "checkpoint.resume=never" in named.stderr


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_naming_the_step_and_the_last_checkpoint_loads(run, tmp_path):
    result = run("diverged", "optimizer.lr=1e12", "scheduler=constant", "checkpoint.every=1")
    assert result.returncode == 1
    assert "the loss is not finite (nan or inf) at step 2" in result.stderr
    assert "checkpoints/step-00000001" in result.stderr and "Traceback" not in result.stderr
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "diverged/checkpoints/step-00000001")
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_same_recipe_and_seed_give_an_identical_loss_trace(run, tmp_path):
    traces = []
    for name in ("one", "two"):
        assert run(name, "checkpoint.every=null").returncode == 0
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        traces.append([json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)])
    assert len(traces[0]) == STEPS and traces[0] == traces[1]


@pytest.mark.slow
@pytest.mark.parametrize("reference", ["cached", "live"])
def test_a_dpo_run_killed_after_a_checkpoint_resumes_to_identical_weights(run, tmp_path, reference):
    """The reference survives the crash: read again from its cache, or rebuilt as the starting model."""
    dpo = ["data.mixture=[{source: recipes/quickstart/data/preferences.jsonl, count: 160, format: preference}]",
           "data.packing=bfd", f"objective={{name: dpo, reference: {reference}}}", "eval=null", f"data.cache_dir={tmp_path / 'cache'}"]
    whole = run("whole", *dpo)
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert run("resumed", *dpo, fault_at=13).returncode == -signal.SIGKILL
    resumed = run("resumed", *dpo)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr and "step 10" in resumed.stderr
    want, got = weights(tmp_path / "whole"), weights(tmp_path / "resumed")
    assert all(torch.equal(want[k], got[k]) for k in want)


def early_stop(evaluations: list[tuple[int, float]], patience: int) -> tuple[int, int]:
    """(the best step, the step patience runs out) from the logged evaluations, worked out here."""
    best_step, best, stale = 0, float("inf"), 0
    for step, loss in evaluations:
        best_step, best, stale = (step, loss, 0) if loss < best else (best_step, best, stale + 1)
        if stale == patience:
            return best_step, step
    raise AssertionError(f"eval_loss kept improving: {evaluations}")


@pytest.mark.slow
def test_early_stopping_keeps_the_best_model_and_a_resumed_run_stops_at_the_same_step(run, tmp_path):
    """A high constant learning rate makes eval_loss rise again; the run stops where its logged evaluations
    say, best/ holds the checkpointed weights of the best step, and a run killed between the best and the
    stop carries the count over its resume."""
    early = ["eval.every_steps=2", "eval.keep_best=true", "eval.early_stopping_patience=3", "checkpoint.every=2",
             "optimizer={name: adamw, lr: 2.0e-2}", "scheduler=constant"]
    whole = run("whole", *early)
    assert whole.returncode == 0, whole.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "whole/metrics.jsonl").read_text().splitlines()]
    best_step, stop = early_stop([(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r], patience=3)
    assert stop < STEPS and f"early stop after step {stop}:" in whole.stderr
    assert records[-1]["summary"]["steps"] == stop and records[-1]["summary"]["best_step"] == best_step
    assert json.loads((tmp_path / "whole/best/best.json").read_text())["step"] == best_step
    checkpoints = tmp_path / "whole/checkpoints"
    best, kept = weights(tmp_path / "whole/best"), weights(checkpoints / f"step-{best_step:08d}")
    assert all(torch.equal(best[k], kept[k]) for k in kept)
    assert "the lowest eval_loss of the run" in (tmp_path / "whole/best/README.md").read_text()

    assert run("resumed", *early, fault_at=stop - 1).returncode == -signal.SIGKILL  # after the checkpoint at stop - 2
    resumed = run("resumed", *early)
    assert resumed.returncode == 0 and f"early stop after step {stop}:" in resumed.stderr, resumed.stderr[-2000:]
    for folder in ("", "best"):
        want, got = weights(tmp_path / "whole" / folder), weights(tmp_path / "resumed" / folder)
        assert all(torch.equal(want[k], got[k]) for k in want)
