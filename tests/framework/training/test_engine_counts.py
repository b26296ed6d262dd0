"""The engine runs exactly the planned steps: step counts, the lr schedule, epoch progress, token
counts and padding, through the real `seqtune train` on a small slice of the quickstart data.

The expected numbers come from the same recipe prepared in-process (the data and its plan), and
the step counts are also re-derived from the row lengths alone.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from framework.registry import bind_parts
from framework.config import load_recipe
from plugins.losses import cross_entropy
from framework.training.setup import prepare
from framework.data.batching import piece_length
from framework.types import IGNORE_INDEX
from plugins.packing import best_fit_decreasing

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
RECIPE = "recipes/quickstart.yaml"
ROWS, BATCH, ACCUMULATION, EPOCHS, MAX_LEN, LR = 100, 8, 2, 2, 128, 3.0e-3
COMMON = [f"data.mixture=[{{source: recipes/quickstart/data/train.jsonl, count: {ROWS}}}]",
          f"train.per_device_batch_size={BATCH}", f"train.gradient_accumulation_steps={ACCUMULATION}",
          f"train.epochs={EPOCHS}", "logging.every_steps=1", "logging.loggers=[jsonl]",
          "logging.peak_tflops=1.0"]  # a peak for the CPU, so that MFU is logged


@contextlib.contextmanager
def cwd(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


class Run:
    """One `seqtune train` run and, for comparison, the same recipe prepared in-process."""

    def __init__(self, seqtune, repo: Path, base: Path, packing: str, extra: tuple[str, ...], world: int = 1):
        self.out = base / "out"
        self.overrides = [f"output_dir={self.out}", f"data.cache_dir={base / 'cache'}",
                          f"data.packing={packing}", *COMMON, *extra]
        with cwd(repo):  # recipe and data paths are relative to the repository
            loaded = load_recipe(RECIPE, self.overrides)
            self.prep = prepare(loaded, bind_parts(loaded), rank=0, world=world)
        result = seqtune(world, "train", RECIPE, *self.overrides)
        assert result.returncode == 0, result.stderr[-3000:]
        lines = [json.loads(line) for line in (self.out / "metrics.jsonl").read_text().splitlines()]
        # the training windows; the quickstart recipe's evaluations are logged too, on their own lines
        self.logs, self.summary = [line for line in lines[:-1] if "loss" in line], lines[-1]["summary"]

    @property
    def lengths(self) -> list[int]:
        return self.prep.data.lengths

    def steps(self):
        """(epoch index, micro-batches of the step, micro-batches done in the epoch, in the epoch)."""
        done = 0
        for epoch, micro_batches in enumerate(self.prep.plan.epochs):
            for first in range(0, len(micro_batches), ACCUMULATION):
                group = micro_batches[first:first + ACCUMULATION]
                yield epoch, group, first + len(group), len(micro_batches)
                done += 1
                if done == self.prep.plan.total_steps:
                    return

    def padding_fraction(self, group) -> float:
        """1 - real tokens / token slots of one step's micro-batches, as collate lays them out."""
        real = slots = 0
        for micro_batch in group:
            rows = [sum(piece_length(p, self.lengths) for p in row) for row in micro_batch]
            real, slots = real + sum(rows), slots + max(rows) * len(rows)
        return 1 - real / slots


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs by (packing, extra overrides, processes), each made once per test process."""
    exe = Path(sys.executable).with_name("seqtune")

    # One thread per process: the suite runs on several workers, and oversubscribed torch threads
    # make a tiny model's steps orders of magnitude slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def seqtune(world: int, *args):
        launch = [] if world == 1 else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                                        str(world), "--master_port", str(free_port()), "--no-python"]
        return subprocess.run([*launch, str(exe), *map(str, args)], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=900)

    made: dict = {}

    def get(packing: str, *extra: str, world: int = 1) -> Run:
        key = (packing, extra, world)
        if key not in made:
            made[key] = Run(seqtune, REPO, tmp_path_factory.mktemp(packing), packing, extra, world)
        return made[key]

    return get


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def micro_batches_per_epoch(packing: str, lengths: list[int]) -> int:
    rows = len(lengths) if packing == "none" else len(best_fit_decreasing(lengths, MAX_LEN, seed=0))
    return math.ceil(rows / BATCH)


def expected_lr(step: int, total: int) -> float:
    warmup = int(0.05 * total)  # the quickstart's linear schedule, warmup_ratio 0.05
    if step < warmup:
        return LR * step / max(1, warmup)
    return LR * max(0.0, (total - step) / max(1, total - warmup))


@pytest.mark.parametrize("packing", ["none", "bfd"])
def test_logged_steps_equal_the_planned_steps(runs, packing):
    run = runs(packing)
    assert len(run.lengths) == ROWS
    per_epoch = math.ceil(micro_batches_per_epoch(packing, run.lengths) / ACCUMULATION)
    total = EPOCHS * per_epoch  # from the lengths alone
    assert run.prep.plan.total_steps == total
    assert run.prep.plan.steps_per_epoch == [per_epoch] * EPOCHS
    assert [r["step"] for r in run.logs] == list(range(1, total + 1))
    assert run.summary["steps"] == total


@pytest.mark.parametrize("packing", ["none", "bfd"])
def test_the_linear_schedule_is_sized_from_the_exact_step_count(runs, packing):
    run = runs(packing)
    total = run.prep.plan.total_steps
    assert run.logs[-1]["lr"] == 0.0
    assert [r["lr"] for r in run.logs] == pytest.approx([expected_lr(s, total) for s in range(1, total + 1)])
    assert all(r["lr"] > 0 for r in run.logs[:-1])


@pytest.mark.parametrize("packing", ["none", "bfd"])
def test_epoch_progress_tokens_and_padding_follow_the_plan(runs, packing):
    run = runs(packing)
    steps = list(run.steps())
    assert len(steps) == len(run.logs)
    for log, (epoch, group, done, of) in zip(run.logs, steps):
        assert log["epoch"] == pytest.approx(round(epoch + done / of, 4))
        assert log["padding_fraction"] == pytest.approx(run.padding_fraction(group), abs=1e-9)
    assert run.logs[-1]["epoch"] == EPOCHS
    labels = run.prep.data.dataset["labels"]
    assert run.summary["tokens"] == EPOCHS * sum(run.lengths)
    assert run.summary["trainable_tokens"] == EPOCHS * sum(len(x) - x.count(IGNORE_INDEX) for x in labels)
    assert run.summary["packing_efficiency"] == round(run.prep.plan.efficiency, 4)


@pytest.mark.parametrize("packing", ["none", "bfd"])
def test_mfu_counts_each_documents_causal_attention(runs, packing):
    """mfu x peak / tokens_per_s is the step's model FLOPs per token: 6N plus each document's causal
    attention by its own length (a packed row's documents are not one long sequence)."""
    from framework.estimation.hardware import FlopsShape, model_flops
    from framework.model.loading import build_model

    run = runs(packing)
    shape = FlopsShape.of(build_model(run.prep.loaded.recipe, run.prep.tokenizer))
    assert shape.num_layers == 2 and shape.attention_dim == 128  # the quickstart model
    for log, (_, group, _, _) in zip(run.logs, run.steps()):
        pieces = [piece_length(p, run.lengths) for micro_batch in group for row in micro_batch for p in row]
        want = model_flops(shape, sum(pieces), sum(n * n for n in pieces)) / sum(pieces)
        assert log["mfu"] * 1e12 / log["tokens_per_s"] == pytest.approx(want, rel=1e-9)
        assert want > 6 * shape.num_parameters


def test_bfd_pads_less_than_none(runs):
    padded, packed = runs("none"), runs("bfd")
    assert packed.prep.plan.efficiency > padded.prep.plan.efficiency
    mean = lambda run: sum(r["padding_fraction"] for r in run.logs) / len(run.logs)  # noqa: E731
    assert mean(packed) < mean(padded)
    assert max(r["padding_fraction"] for r in packed.logs) < min(r["padding_fraction"] for r in padded.logs)
    assert packed.summary["steps"] < padded.summary["steps"]


def test_max_steps_beyond_one_epoch_stops_exactly_there(runs):
    per_epoch = math.ceil(math.ceil(ROWS / BATCH) / ACCUMULATION)
    max_steps = per_epoch + 3  # into the second epoch
    run = runs("none", f"train.max_steps={max_steps}", "train.epochs=1")
    assert len(run.prep.plan.epochs) == 2 and run.prep.plan.total_steps == max_steps
    assert [r["step"] for r in run.logs] == list(range(1, max_steps + 1))
    assert run.summary["steps"] == max_steps
    assert run.logs[-1]["lr"] == 0.0
    micro_batches = math.ceil(ROWS / BATCH)
    assert run.logs[-1]["epoch"] == pytest.approx(round(1 + 3 * ACCUMULATION / micro_batches, 4))
    done = [mb for _, group, _, _ in run.steps() for mb in group]
    assert run.summary["tokens"] == sum(piece_length(p, run.lengths) for mb in done for row in mb for p in row)


def test_max_steps_within_one_epoch_stops_exactly_there(runs):
    run = runs("none", "train.max_steps=3")
    assert run.prep.plan.total_steps == 3 and len(run.prep.plan.epochs) == 1
    assert [r["step"] for r in run.logs] == [1, 2, 3]
    assert run.summary["steps"] == 3
    assert run.logs[-1]["lr"] == 0.0
    assert run.logs[-1]["epoch"] == pytest.approx(round(3 * ACCUMULATION / math.ceil(ROWS / BATCH), 4))


def test_two_processes_take_the_planned_steps_and_count_every_real_token_once(runs):
    """Two ranks on the CPU (gloo): 13 micro-batches an epoch, so rank 1 runs one empty micro-batch
    per epoch; the run still takes the planned steps, and an empty micro-batch adds no tokens."""
    run = runs("none", world=2)
    micro_batches = math.ceil(ROWS / BATCH)
    assert micro_batches % 2 == 1
    total = EPOCHS * math.ceil(math.ceil(micro_batches / 2) / ACCUMULATION)  # from the lengths alone
    assert run.prep.plan.total_steps == total
    assert [r["step"] for r in run.logs] == list(range(1, total + 1))
    assert run.summary["steps"] == total
    assert run.logs[-1]["lr"] == 0.0
    assert run.logs[-1]["epoch"] == EPOCHS
    labels = run.prep.data.dataset["labels"]
    assert run.summary["trainable_tokens"] == EPOCHS * sum(len(x) - x.count(IGNORE_INDEX) for x in labels)
    assert run.summary["tokens"] == EPOCHS * sum(run.lengths)  # summed over both ranks


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_loss_of_a_packed_micro_batch_is_the_sum_over_its_samples(repo, tmp_path, request, attention):
    """A packed row trains each sample as if it were alone: same summed loss, same token count."""
    import torch

    from framework.model.loading import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see `runs`: oversubscribed threads are very slow here
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    with cwd(repo):
        loaded = load_recipe(RECIPE, [f"output_dir={tmp_path / 'out'}", f"data.cache_dir={tmp_path / 'cache'}",
                                      "data.packing=bfd", f"model.attn_implementation={attention}", *COMMON])
        prep = prepare(loaded, bind_parts(loaded))
    torch.manual_seed(0)
    model = build_model(loaded.recipe, prep.tokenizer).eval()
    pad = prep.tokenizer.pad_token_id
    micro_batch = prep.plan.epochs[0][0]
    rows = prep.data.take(micro_batch)
    assert any(len(row) > 1 for row in rows)
    token_loss = cross_entropy()
    with torch.no_grad():
        packed_loss, packed_tokens = token_loss(model, prep.packing.collate(rows, pad))
        alone_loss = alone_tokens = 0
        for sample in (s for row in rows for s in row):
            batch = {"input_ids": torch.tensor([sample.input_ids]), "labels": torch.tensor([sample.labels])}
            loss, tokens = token_loss(model, batch)
            alone_loss, alone_tokens = alone_loss + loss, alone_tokens + tokens
    assert int(packed_tokens) == int(alone_tokens) == sum(s.num_trainable for row in rows for s in row)
    assert float(packed_loss) == pytest.approx(float(alone_loss), rel=1e-4)
