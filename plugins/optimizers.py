"""Optimizers. They receive parameter groups whose weight decay the engine has already set.

The engine passes two groups (`framework.model.loading.param_groups`): the matrices, which take the
optimizer's `weight_decay`, and the biases and norm weights, which set `weight_decay: 0.0` of their
own. Each factory imports torch (or transformers) when called, so importing this module is cheap.
"""
from __future__ import annotations

from typing import Optional

from framework import UserError, hookimpl


def _decayed(param_groups: list[dict], weight_decay: float) -> list[dict]:
    """The groups, with `weight_decay` on those that do not set their own."""
    return [{"weight_decay": weight_decay, **group} for group in param_groups]


def adamw(param_groups: list[dict], *, lr: float = 2e-5, betas: list[float] = (0.9, 0.999),
          eps: float = 1e-8, weight_decay: float = 0.0, fused: Optional[bool] = None,
          foreach: Optional[bool] = None):
    """torch.optim.AdamW; `weight_decay` applies to the decayed group only.

    `fused` and `foreach` pick torch's kernel (null: torch chooses); at most one may be true.
    """
    import torch

    if fused and foreach:
        raise UserError("optimizer: set fused or foreach to true, not both")
    return torch.optim.AdamW(_decayed(param_groups, weight_decay), lr=lr, betas=tuple(betas), eps=eps,
                             fused=fused, foreach=foreach)


def sgd(param_groups: list[dict], *, lr: float = 1e-3, momentum: float = 0.0, nesterov: bool = False,
        weight_decay: float = 0.0, dampening: float = 0.0):
    """torch.optim.SGD; `weight_decay` (L2, added to the gradient) applies to the decayed group only."""
    import torch

    if nesterov and (momentum <= 0 or dampening != 0):
        raise UserError(f"optimizer.nesterov: needs momentum > 0 and dampening 0, "
                        f"got momentum {momentum} and dampening {dampening}")
    return torch.optim.SGD(_decayed(param_groups, weight_decay), lr=lr, momentum=momentum,
                           nesterov=nesterov, dampening=dampening)


def adafactor(param_groups: list[dict], *, lr: Optional[float] = None,
              scale_parameter: Optional[bool] = None, relative_step: Optional[bool] = None,
              warmup_init: bool = False, weight_decay: float = 0.0, clip_threshold: float = 1.0,
              beta1: Optional[float] = None):
    """transformers' Adafactor.

    With `lr`, the scheduler drives that lr: relative_step and scale_parameter default to false.
    Without `lr`, Adafactor sets its own step size: relative_step must be true and
    scale_parameter defaults to true (Adafactor's defaults); `warmup_init` needs this mode.
    """
    if lr is not None:
        if relative_step:
            raise UserError("optimizer.relative_step: cannot be true with an explicit lr; "
                            "remove lr to let Adafactor set its own step size")
        relative_step = False
        scale_parameter = bool(scale_parameter)
    else:
        if relative_step is False:
            raise UserError("optimizer.relative_step: false needs an explicit lr")
        relative_step = True
        scale_parameter = True if scale_parameter is None else scale_parameter
    if warmup_init and not relative_step:
        raise UserError("optimizer.warmup_init: needs relative_step (no explicit lr)")

    from transformers.optimization import Adafactor

    return Adafactor(_decayed(param_groups, weight_decay), lr=lr, scale_parameter=scale_parameter,
                     relative_step=relative_step, warmup_init=warmup_init, weight_decay=weight_decay,
                     clip_threshold=clip_threshold, beta1=beta1)


# Full-size state tensors per trained parameter, for the memory plan (see hookspecs.py).
adamw.state_tensors = 2  # momentum and variance
sgd.state_tensors = lambda *, momentum=0.0: 1 if momentum else 0  # the momentum buffer
adafactor.state_tensors = lambda *, beta1=None: 1 if beta1 else 0  # factored second moments are negligible


@hookimpl
def seqtune_register_optimizers():
    return {"adamw": adamw, "sgd": sgd, "adafactor": adafactor}
