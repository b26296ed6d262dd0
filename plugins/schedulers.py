"""Learning-rate schedules, sized by the exact number of optimizer steps of the run."""
from __future__ import annotations

from typing import Optional

from framework import UserError, hookimpl


def warmup_steps_of(num_training_steps: int, warmup_ratio: float, warmup_steps: Optional[int]) -> int:
    if warmup_steps is not None and warmup_ratio:
        raise UserError("scheduler: set warmup_ratio or warmup_steps, not both")
    if not 0.0 <= warmup_ratio <= 1.0:
        raise UserError(f"scheduler.warmup_ratio: must be between 0 and 1, got {warmup_ratio}")
    return warmup_steps if warmup_steps is not None else int(warmup_ratio * num_training_steps)


def linear(optimizer, num_training_steps: int, *, warmup_ratio: float = 0.0,
           warmup_steps: Optional[int] = None):
    """Linear warmup from 0, then linear decay to 0 at the last step (HF's linear schedule)."""
    import torch

    warmup = warmup_steps_of(num_training_steps, warmup_ratio, warmup_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (num_training_steps - step) / max(1, num_training_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@hookimpl
def seqtune_register_schedulers():
    return {"linear": linear}
