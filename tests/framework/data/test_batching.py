"""framework.plan: sharding micro-batches over ranks, packing efficiency and the run's exact shape."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Optional

import pytest

from framework.data.batching import efficiency, plan_batches, shard
from framework.types import IGNORE_INDEX, Sample
from plugins.packing import bfd, none, wrapped


@dataclass
class Train:
    per_device_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    epochs: int = 1
    max_steps: Optional[int] = None


def lengths_of(n: int, seed: int = 0, high: int = 40) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, high) for _ in range(n)]


# --- shard --------------------------------------------------------------------------------------

@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 9, 13])
def test_shard_gives_every_rank_as_many_and_covers_the_plan_once(n, world):
    plan = [[[i]] for i in range(n)]  # distinct micro-batches
    shards = [shard(plan, rank, world) for rank in range(world)]
    assert [len(s) for s in shards] == [math.ceil(n / world)] * world
    real = [mb for s in shards for mb in s if mb is not None]
    assert sorted(real) == plan  # each micro-batch on exactly one rank
    for s in shards:  # a rank's empty micro-batches come after its real ones
        nones = [k for k, mb in enumerate(s) if mb is None]
        assert nones == list(range(len(s) - len(nones), len(s)))
    assert sum(mb is None for s in shards for mb in s) == math.ceil(n / world) * world - n


def test_shard_of_one_rank_is_the_plan():
    plan = [[[3], [1]], [[0]], [[2]]]
    assert shard(plan, 0, 1) == plan


# --- efficiency ---------------------------------------------------------------------------------

def test_efficiency_by_hand_padded():
    lengths = [5, 3, 8, 2, 6]
    plan = [[[0], [1]], [[2], [3]], [[4]]]
    # widths 5, 8, 6 over 2, 2, 1 rows: slots 10 + 16 + 6 = 32; real 24
    assert efficiency(plan, lengths, 1, padding_free=False) == pytest.approx(24 / 32)
    # rounded up to multiples of 4: widths 8, 8, 8: slots 16 + 16 + 8 = 40
    assert efficiency(plan, lengths, 4, padding_free=False) == pytest.approx(24 / 40)


def test_efficiency_by_hand_packed_rows_and_slices():
    lengths = [5, 3, 8, 2, 6]
    plan = [[[0, 1], [2]], [[3, (4, 0, 4)]], [[(4, 4, 6)]]]
    # rows 8, 8 | 6 | 2: slots 16 + 6 + 2 = 24, real 24
    assert efficiency(plan, lengths, 1, padding_free=False) == pytest.approx(1.0)
    plan = [[[0, 3], [1]], [[2, (4, 0, 1)], [(4, 1, 6)]]]
    # rows 7, 3 (width 7) | 9, 5 (width 9): slots 14 + 18 = 32, real 24
    assert efficiency(plan, lengths, 1, padding_free=False) == pytest.approx(24 / 32)
    # padding-free: one row per micro-batch, no padding at all
    assert efficiency(plan, lengths, 1, padding_free=True) == pytest.approx(1.0)
    assert efficiency(plan, lengths, 8, padding_free=True) == pytest.approx(1.0)


def test_efficiency_of_an_empty_plan():
    assert efficiency([], [], 1, padding_free=False) == 0.0


def samples_for(lengths: list[int]) -> list[Sample]:
    return [Sample(list(range(2, 2 + n)), [IGNORE_INDEX] + list(range(3, 2 + n))) for n in lengths]


def cut(samples: list[Sample], rows: list[list]) -> list[list[Sample]]:
    def piece(p):
        if isinstance(p, int):
            return samples[p]
        s = samples[p[0]]
        return Sample(s.input_ids[p[1]:p[2]], s.labels[p[1]:p[2]])

    return [[piece(p) for p in row] for row in rows]


@pytest.mark.parametrize("padding_free", [False, True])
@pytest.mark.parametrize("packing", [none(), none(pad_to_multiple_of=8), bfd(), wrapped()],
                         ids=["none", "none-multiple-8", "bfd", "wrapped"])
def test_plan_efficiency_is_what_the_collated_batches_compute(packing, padding_free):
    """The reported efficiency is real tokens over the token slots of what collate really
    produces, whichever strategy and whether or not padding-free was asked for."""
    lengths = lengths_of(90, seed=3, high=60)
    samples = samples_for(lengths)
    plan = plan_batches(packing, lengths, Train(per_device_batch_size=4), 64, seed=2, padding_free=padding_free)
    first = packing.plan(lengths, 4, 64, 2)
    real = slots = 0
    for micro_batch in first:
        batch = packing.collate(cut(samples, micro_batch), 0, padding_free)
        real += int(batch["num_tokens"])
        slots += batch["input_ids"].numel()
    assert real == sum(lengths)
    assert plan.efficiency == pytest.approx(real / slots)


# --- plan_batches ----------------------------------------------------------------------------------

@pytest.mark.parametrize("packing", [none(), bfd(), wrapped()], ids=["none", "bfd", "wrapped"])
def test_make_plan_plans_each_epoch_with_its_own_seed(packing):
    lengths = lengths_of(70)
    train = Train(per_device_batch_size=4, gradient_accumulation_steps=3, epochs=3)
    plan = plan_batches(packing, lengths, train, 64, seed=10)
    assert len(plan.epochs) == 3
    expected = [packing.plan(lengths, 4, 64, 10 + e) for e in range(3)]
    assert plan.epochs == expected  # one rank: the whole plan, seed + epoch
    assert plan.epochs[0] != plan.epochs[1]
    assert plan.steps_per_epoch == [math.ceil(len(p) / 3) for p in expected]
    assert plan.total_steps == sum(plan.steps_per_epoch)
    assert plan.micro_batches == len(expected[0])
    assert plan.efficiency == pytest.approx(efficiency(expected[0], lengths, 1, False))


@pytest.mark.parametrize("n, batch_size, accumulation, steps", [
    (50, 4, 1, 13), (50, 4, 3, 5), (48, 4, 3, 4), (48, 4, 5, 3), (5, 8, 4, 1), (50, 1, 7, 8)])
def test_steps_per_epoch_is_micro_batches_over_accumulation_rounded_up(n, batch_size, accumulation, steps):
    train = Train(per_device_batch_size=batch_size, gradient_accumulation_steps=accumulation, epochs=2)
    plan = plan_batches(none(), lengths_of(n), train, 64, seed=0)
    assert plan.steps_per_epoch == [steps, steps]
    assert plan.total_steps == 2 * steps
    assert all(len(mbs) == math.ceil(n / batch_size) for mbs in plan.epochs)


@pytest.mark.parametrize("max_steps, epochs_planned", [(12, 3), (10, 2), (11, 3), (5, 1), (6, 2), (23, 5)])
def test_max_steps_beyond_one_epoch_plans_more_epochs(max_steps, epochs_planned):
    # 50 rows in 13 micro-batches of 4; 3 per step: 5 steps an epoch
    train = Train(per_device_batch_size=4, gradient_accumulation_steps=3, epochs=1, max_steps=max_steps)
    plan = plan_batches(none(), lengths_of(50), train, 64, seed=0)
    assert len(plan.epochs) == epochs_planned
    assert plan.steps_per_epoch == [5] * epochs_planned
    assert plan.total_steps == max_steps
    assert sum(plan.steps_per_epoch[:-1]) < max_steps <= sum(plan.steps_per_epoch)
    assert plan.epochs == [none().plan(lengths_of(50), 4, 64, e) for e in range(epochs_planned)]


@pytest.mark.parametrize("max_steps", [1, 2, 4])
def test_max_steps_within_one_epoch(max_steps):
    train = Train(per_device_batch_size=4, gradient_accumulation_steps=3, epochs=4, max_steps=max_steps)
    plan = plan_batches(none(), lengths_of(50), train, 64, seed=0)
    assert len(plan.epochs) == 1  # max_steps overrides epochs
    assert plan.total_steps == max_steps
    assert plan.steps_per_epoch == [5]


def test_make_plan_of_no_rows_is_empty_even_with_max_steps():
    for train in (Train(epochs=3), Train(max_steps=5)):
        plan = plan_batches(none(), [], train, 64, seed=0)
        assert plan.total_steps == 0


@pytest.mark.parametrize("packing", [none(), bfd()], ids=["none", "bfd"])
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_get_equal_plans_that_together_cover_the_epoch(packing, world):
    lengths = lengths_of(52, seed=1)  # none: 13 micro-batches of 4, not a multiple of 2 or 3
    train = Train(per_device_batch_size=4, gradient_accumulation_steps=2, epochs=2)
    plans = [plan_batches(packing, lengths, train, 64, seed=5, rank=r, world=world) for r in range(world)]
    for e in range(2):
        whole = packing.plan(lengths, 4, 64, 5 + e)
        mine = [p.epochs[e] for p in plans]
        assert len({len(m) for m in mine}) == 1 and len(mine[0]) == math.ceil(len(whole) / world)
        real = [mb for m in mine for mb in m if mb is not None]
        assert sorted(real) == sorted(whole)
        if len(whole) % world:
            assert any(m[-1] is None for m in mine)
            assert mine[0][-1] is not None
    assert len({tuple(p.steps_per_epoch) for p in plans}) == 1
    assert len({p.total_steps for p in plans}) == 1
    assert plans[0].steps_per_epoch == [math.ceil(len(plans[0].epochs[e]) / 2) for e in range(2)]
    assert all(p.micro_batches == len(packing.plan(lengths, 4, 64, 5)) for p in plans)


def test_two_ranks_odd_micro_batches():
    lengths = lengths_of(13 * 4)
    train = Train(per_device_batch_size=4, gradient_accumulation_steps=1, epochs=1)
    rank0, rank1 = (plan_batches(none(), lengths, train, 64, seed=0, rank=r, world=2) for r in (0, 1))
    assert len(rank0.epochs[0]) == len(rank1.epochs[0]) == 7
    assert rank1.epochs[0][-1] is None and None not in rank1.epochs[0][:-1]
    assert None not in rank0.epochs[0]
    assert rank0.total_steps == rank1.total_steps == 7
    assert rank0.micro_batches == 13


def test_max_steps_with_two_ranks_counts_steps_per_rank():
    lengths = lengths_of(13 * 4)  # 13 micro-batches: 7 per rank
    train = Train(per_device_batch_size=4, gradient_accumulation_steps=2, max_steps=9)  # 4 steps an epoch
    plans = [plan_batches(none(), lengths, train, 64, seed=0, rank=r, world=2) for r in (0, 1)]
    for p in plans:
        assert p.steps_per_epoch == [4, 4, 4]
        assert p.total_steps == 9
