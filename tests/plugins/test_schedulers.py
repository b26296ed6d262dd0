"""plugins.schedulers: `linear` warms up from 0, then decays to 0 at the last optimizer step."""
from __future__ import annotations

import pytest
import torch

from framework.errors import UserError
from plugins.schedulers import linear


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
    with pytest.raises(UserError, match="warmup_ratio or warmup_steps, not both"):
        linear(optimizer(), 10, warmup_ratio=0.1, warmup_steps=2)


def test_warmup_ratio_out_of_range_is_an_error():
    with pytest.raises(UserError, match="warmup_ratio"):
        linear(optimizer(), 10, warmup_ratio=1.5)
