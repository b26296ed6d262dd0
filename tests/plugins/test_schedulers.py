"""plugins.schedulers: warm up linearly from 0, then `linear`, `cosine` or `constant` to the last step."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from framework.config.schema import Component
from framework.config.validate import Problems
from framework.errors import UserError
from framework.registry import build_registry
from plugins.schedulers import constant, constant_with_warmup, cosine, linear


def optimizer(lr: float = 1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def lrs(scheduler, opt, steps: int) -> list[float]:
    """The learning rate before the first step and after each of `steps` optimizer steps."""
    seen = [scheduler.get_last_lr()[0]]
    for _ in range(steps):
        opt.step()
        scheduler.step()
        seen.append(scheduler.get_last_lr()[0])
    return seen


def test_warmup_steps_then_linear_decay():
    opt = optimizer(2.0)
    seen = lrs(linear(opt, 10, warmup_steps=2), opt, 10)
    assert seen[0] == 0.0  # step 0: warmup starts from 0
    assert seen[1] == pytest.approx(1.0)  # halfway through warmup
    assert seen[2] == pytest.approx(2.0)  # end of warmup: the full lr
    assert seen[6] == pytest.approx(2.0 * 4 / 8)
    assert seen[10] == 0.0  # the last step
    assert all(a >= b for a, b in zip(seen[2:], seen[3:]))


def test_warmup_ratio_is_a_share_of_the_steps():
    opt = optimizer()
    seen = lrs(linear(opt, 20, warmup_ratio=0.25), opt, 20)  # 5 warmup steps
    assert seen[0] == 0.0
    assert seen[4] == pytest.approx(0.8)
    assert seen[5] == pytest.approx(1.0)
    assert seen[20] == 0.0
    opt2 = optimizer()
    assert lrs(linear(opt2, 20, warmup_steps=5), opt2, 20) == pytest.approx(seen)


def test_no_warmup_starts_at_the_full_lr():
    opt = optimizer(0.5)
    seen = lrs(linear(opt, 4), opt, 4)
    assert seen == pytest.approx([0.5, 0.375, 0.25, 0.125, 0.0])


def test_warmup_ratio_and_warmup_steps_together_is_an_error():
    assert bind("linear", warmup_ratio=0.1, warmup_steps=2)[1] == [
        "recipe.yaml: scheduler: set warmup_ratio or warmup_steps, not both"]


def test_warmup_ratio_out_of_range_is_an_error():
    assert bind("linear", warmup_ratio=1.5)[1] == [
        "recipe.yaml: scheduler.warmup_ratio: must be between 0 and 1, got 1.5"]


def test_warmup_steps_below_zero_is_an_error():
    assert bind("linear", warmup_steps=-1)[1] == ["recipe.yaml: scheduler.warmup_steps: must be at least 0, got -1"]


def test_steps_past_the_last_keep_the_last_factor():
    opt = optimizer()
    assert lrs(linear(opt, 4), opt, 6)[4:] == [0.0, 0.0, 0.0]


# -- cosine -----------------------------------------------------------------------------------------

def test_cosine_warms_up_then_falls_to_zero_at_the_last_step():
    opt = optimizer(2.0)
    seen = lrs(cosine(opt, 12, warmup_steps=2), opt, 12)
    assert seen[0] == 0.0
    assert seen[1] == pytest.approx(1.0)
    assert seen[2] == pytest.approx(2.0)  # end of warmup: the full lr
    assert seen[7] == pytest.approx(1.0)  # halfway through the decay: half the lr
    assert seen[4] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 2 / 10)))
    assert seen[12] == 0.0
    assert all(a > b for a, b in zip(seen[2:], seen[3:]))


def test_cosine_ends_exactly_at_min_lr_ratio():
    opt = optimizer()
    seen = lrs(cosine(opt, 10, min_lr_ratio=0.1), opt, 12)
    assert seen[0] == 1.0  # no warmup: the full lr from the start
    assert seen[5] == pytest.approx(0.1 + 0.9 * 0.5)
    assert seen[10] == 0.1
    assert seen[11] == seen[12] == 0.1  # and it stays there
    assert min(seen) == 0.1


def test_cosine_min_lr_ratio_of_one_is_constant():
    opt = optimizer(0.5)
    assert lrs(cosine(opt, 6, min_lr_ratio=1.0), opt, 6) == pytest.approx([0.5] * 7)


def test_cosine_num_cycles():
    opt = optimizer()
    seen = lrs(cosine(opt, 8, num_cycles=1.0), opt, 8)  # a whole cycle: down and back up
    assert seen[0] == pytest.approx(1.0)
    assert seen[2] == pytest.approx(0.5)
    assert seen[4] == pytest.approx(0.0)
    assert seen[8] == pytest.approx(1.0)
    opt = optimizer()
    seen = lrs(cosine(opt, 8, num_cycles=0.25, min_lr_ratio=0.2), opt, 8)  # a quarter: ends halfway
    assert seen[8] == pytest.approx(0.2 + 0.8 * 0.5)


def test_cosine_warmup_ratio_matches_warmup_steps():
    opt = optimizer()
    by_ratio = lrs(cosine(opt, 20, warmup_ratio=0.1, min_lr_ratio=0.05), opt, 20)
    opt = optimizer()
    by_steps = lrs(cosine(opt, 20, warmup_steps=2, min_lr_ratio=0.05), opt, 20)
    assert by_ratio == by_steps
    assert by_ratio[1] == pytest.approx(0.5) and by_ratio[2] == pytest.approx(1.0)
    assert by_ratio[11] == pytest.approx(0.05 + 0.95 * 0.5)
    assert by_ratio[20] == pytest.approx(0.05)


@pytest.mark.parametrize("ratio", [-0.1, 1.5])
def test_cosine_min_lr_ratio_out_of_range_is_an_error(ratio):
    assert bind("cosine", min_lr_ratio=ratio)[1] == [
        f"recipe.yaml: scheduler.min_lr_ratio: must be between 0 and 1, got {ratio}"]


def test_cosine_num_cycles_must_be_positive():
    assert bind("cosine", num_cycles=0.0)[1] == ["recipe.yaml: scheduler.num_cycles: must be above 0, got 0.0"]


def test_cosine_checks_warmup_options():
    assert bind("cosine", warmup_ratio=0.1, warmup_steps=2)[1] == [
        "recipe.yaml: scheduler: set warmup_ratio or warmup_steps, not both"]


# -- constant -----------------------------------------------------------------------------------------

def test_constant_keeps_the_lr():
    opt = optimizer(0.3)
    scheduler = constant(opt, 5)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    assert lrs(scheduler, opt, 7) == [0.3] * 8


def test_constant_with_warmup():
    opt = optimizer(0.4)
    seen = lrs(constant_with_warmup(opt, 10, warmup_steps=4), opt, 10)
    assert seen[0] == 0.0
    assert seen[2] == pytest.approx(0.2)
    assert seen[4:] == pytest.approx([0.4] * 7)
    opt = optimizer(0.4)
    assert lrs(constant_with_warmup(opt, 10, warmup_ratio=0.4), opt, 10) == seen


def test_constant_with_warmup_checks_warmup_options():
    assert bind("constant_with_warmup", warmup_ratio=2.0)[1] == [
        "recipe.yaml: scheduler.warmup_ratio: must be between 0 and 1, got 2.0"]


@pytest.mark.parametrize("make", [linear, cosine, constant, constant_with_warmup])
def test_every_schedule_scales_each_group(make):
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": [params[0]], "lr": 1.0}, {"params": [params[1]], "lr": 0.25}])
    scheduler = make(opt, 4)
    for _ in range(2):
        opt.step()
        scheduler.step()
    first, second = scheduler.get_last_lr()
    assert second == pytest.approx(first / 4)
    assert [g["lr"] for g in opt.param_groups] == scheduler.get_last_lr()


@pytest.mark.parametrize("make", [linear, cosine, constant, constant_with_warmup])
def test_a_resumed_schedule_continues_where_it_stopped(make):
    """What a checkpoint keeps (optimizer and scheduler state dicts) restores the schedule."""
    options = {} if make is constant else {"warmup_steps": 2}
    opt = optimizer()
    whole = lrs(make(opt, 8, **options), opt, 8)
    opt = optimizer()
    scheduler = make(opt, 8, **options)
    first = lrs(scheduler, opt, 3)
    saved = (opt.state_dict(), scheduler.state_dict())
    opt = optimizer()
    scheduler = make(opt, 8, **options)
    opt.load_state_dict(saved[0])
    scheduler.load_state_dict(saved[1])
    assert first + lrs(scheduler, opt, 5)[1:] == pytest.approx(whole)


@pytest.mark.parametrize("make", [linear, cosine, constant, constant_with_warmup])
def test_an_optimizer_without_an_lr_is_an_error(make):
    from plugins.optimizers import adafactor  # relative-step Adafactor has lr None

    opt = adafactor([{"params": [torch.nn.Parameter(torch.zeros(2))]}])
    with pytest.raises(UserError, match="the optimizer has no lr to schedule"):
        make(opt, 4)


# -- through the registry, as a recipe selects them -----------------------------------------------

def bind(name: str, **options):
    problems = Problems(lambda key: "recipe.yaml")
    factory = build_registry().bind("schedulers", Component(name, options), problems, "scheduler")
    return factory, problems.lines


def test_all_schedules_are_registered():
    assert {"linear", "cosine", "constant", "constant_with_warmup"} <= set(build_registry().entries["schedulers"])


def test_recipe_options_bind_and_build():
    factory, lines = bind("cosine", warmup_steps=1, min_lr_ratio=0, num_cycles=0.5)
    assert lines == []
    opt = optimizer()
    seen = lrs(factory(opt, 3), opt, 3)
    assert seen == pytest.approx([0.0, 1.0, 0.5, 0.0])


@pytest.mark.parametrize("name, options, line", [
    ("cosine", {"min_lr": 0.1}, "recipe.yaml: scheduler.min_lr: unknown option; did you mean 'min_lr_ratio'?"),
    ("constant", {"warmup_steps": 10}, "recipe.yaml: scheduler.warmup_steps: unknown option"),
])
def test_unknown_option_is_a_recipe_error(name, options, line):
    factory, lines = bind(name, **options)
    assert factory is None
    assert lines == [line]


@pytest.mark.parametrize("name, options, line", [
    ("cosine", {"min_lr_ratio": "low"}, "recipe.yaml: scheduler.min_lr_ratio: expected float, got str"),
    ("constant_with_warmup", {"warmup_steps": 2.5}, "recipe.yaml: scheduler.warmup_steps: expected int, got float"),
    ("linear", {"warmup_ratio": True}, "recipe.yaml: scheduler.warmup_ratio: expected float, got bool"),
])
def test_wrong_type_is_a_recipe_error(name, options, line):
    factory, lines = bind(name, **options)
    assert factory is None
    assert lines == [line]


def test_torch_loads_only_when_a_schedule_is_built():
    code = "import sys, plugins.schedulers; print('torch' in sys.modules)"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "False"
