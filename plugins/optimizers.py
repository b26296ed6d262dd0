"""Optimizers. They receive parameter groups whose weight decay the engine has already set."""
from __future__ import annotations

from typing import Optional

from framework import hookimpl


def adamw(param_groups: list[dict], *, lr: float = 2e-5, betas: list[float] = (0.9, 0.999),
          eps: float = 1e-8, weight_decay: float = 0.0, fused: Optional[bool] = None):
    """torch.optim.AdamW; `weight_decay` applies to the decayed group only."""
    import torch

    for group in param_groups:
        group.setdefault("weight_decay", weight_decay)
    return torch.optim.AdamW(param_groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)


@hookimpl
def seqtune_register_optimizers():
    return {"adamw": adamw}
