"""Learning-rate schedules, sized by the exact number of optimizer steps of the run.

Every schedule is a `torch.optim.lr_scheduler.LambdaLR` built by `_schedule`: a linear warmup from
0 over the warmup steps, then a shape over the rest of the run (`progress` from 0 at the end of
warmup to 1 at the last step; steps past the last one keep the last step's factor). Each factory
declares its `warmup_steps`, so the dry run shows them without building anything, and its rules
(`check`) and option bounds, so a recipe's values are checked before anything runs.
"""
from __future__ import annotations

import math
from typing import Annotated, Callable, Optional

from framework import Bounds, UserError, hookimpl

WarmupRatio = Annotated[float, Bounds(ge=0, le=1)]
WarmupSteps = Optional[Annotated[int, Bounds(ge=0)]]


def warmup_steps_of(num_training_steps: int, *, warmup_ratio: float = 0.0, warmup_steps: Optional[int] = None
                    ) -> int:
    """The warmup of a run of `num_training_steps`: warmup_steps, or that share of the run."""
    return warmup_steps if warmup_steps is not None else int(warmup_ratio * num_training_steps)


def _warmup_rules(*, warmup_ratio=0.0, warmup_steps=None, **_):
    if warmup_steps is not None and warmup_ratio:
        yield "", "set warmup_ratio or warmup_steps, not both"


def _schedule(optimizer, num_training_steps: int, warmup: int, shape: Callable[[float], float]):
    """LambdaLR: `step / warmup` during warmup, then `shape(progress)`."""
    import torch

    if any(group.get("lr") is None for group in optimizer.param_groups):
        raise UserError("scheduler: the optimizer has no lr to schedule (adafactor without lr sets "
                        "its own step size); give the optimizer an lr")

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        return shape(min(1.0, (step - warmup) / max(1, num_training_steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _flat(progress: float) -> float:
    return 1.0


def _falling(progress: float) -> float:
    return 1.0 - progress


def linear(optimizer, num_training_steps: int, *, warmup_ratio: WarmupRatio = 0.0,
           warmup_steps: WarmupSteps = None):
    """Linear warmup from 0, then linear decay to 0 at the last step (HF's linear schedule)."""
    warmup = warmup_steps_of(num_training_steps, warmup_ratio=warmup_ratio, warmup_steps=warmup_steps)
    return _schedule(optimizer, num_training_steps, warmup, _falling)


def cosine(optimizer, num_training_steps: int, *, warmup_ratio: WarmupRatio = 0.0,
           warmup_steps: WarmupSteps = None, min_lr_ratio: Annotated[float, Bounds(ge=0, le=1)] = 0.0,
           num_cycles: Annotated[float, Bounds(gt=0)] = 0.5):
    """Linear warmup from 0, then a cosine from the full lr to `min_lr_ratio` of it at the last step.

    The factor is min + (1 - min) * (1 + cos(2 pi num_cycles progress)) / 2; with the default half
    cycle it falls once, and other values make it rise and fall again (1.0: back to the full lr).
    """
    warmup = warmup_steps_of(num_training_steps, warmup_ratio=warmup_ratio, warmup_steps=warmup_steps)

    def shape(progress: float) -> float:
        wave = 0.5 * (1.0 + math.cos(math.pi * 2.0 * num_cycles * progress))
        return min_lr_ratio + (1.0 - min_lr_ratio) * wave

    return _schedule(optimizer, num_training_steps, warmup, shape)


def constant(optimizer, num_training_steps: int):
    """The optimizer's lr at every step."""
    return _schedule(optimizer, num_training_steps, 0, _flat)


def constant_with_warmup(optimizer, num_training_steps: int, *, warmup_ratio: WarmupRatio = 0.0,
                         warmup_steps: WarmupSteps = None):
    """Linear warmup from 0, then the optimizer's lr."""
    warmup = warmup_steps_of(num_training_steps, warmup_ratio=warmup_ratio, warmup_steps=warmup_steps)
    return _schedule(optimizer, num_training_steps, warmup, _flat)


linear.warmup_steps = cosine.warmup_steps = constant_with_warmup.warmup_steps = warmup_steps_of
linear.check = cosine.check = constant_with_warmup.check = _warmup_rules
constant.warmup_steps = 0


@hookimpl
def seqtune_register_schedulers():
    return {"linear": linear, "cosine": cosine, "constant": constant,
            "constant_with_warmup": constant_with_warmup}
