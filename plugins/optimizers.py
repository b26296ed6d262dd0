"""Optimizers. They receive parameter groups whose weight decay the engine has already set.

The engine passes two groups (`framework.model.loading.param_groups`): the matrices, which take the
optimizer's `weight_decay`, and the biases and norm weights, which set `weight_decay: 0.0` of their
own. Each factory imports torch (or transformers) when called, so importing this module is cheap.
Every numeric option carries its bounds, and each factory declares its rules across options
(`check`) and its state tensors (`state_tensors`): all read when the recipe is checked.
"""
from __future__ import annotations

from typing import Annotated, Optional

from framework import Bounds, hookimpl

Positive = Annotated[float, Bounds(gt=0)]
NonNegative = Annotated[float, Bounds(ge=0)]
Fraction = Annotated[float, Bounds(ge=0, lt=1)]  # a decay factor such as a momentum or a beta


def _decayed(param_groups: list[dict], weight_decay: float) -> list[dict]:
    """The groups, with `weight_decay` on those that do not set their own."""
    return [{"weight_decay": weight_decay, **group} for group in param_groups]


def adamw(param_groups: list[dict], *, lr: Positive = 2e-5,
          betas: Annotated[list[float], Bounds(ge=0, lt=1)] = (0.9, 0.999), eps: Positive = 1e-8,
          weight_decay: NonNegative = 0.0, fused: Optional[bool] = None, foreach: Optional[bool] = None):
    """torch.optim.AdamW; `weight_decay` applies to the decayed group only.

    `fused` and `foreach` pick torch's kernel (null: torch chooses); at most one may be true.
    """
    import torch

    return torch.optim.AdamW(_decayed(param_groups, weight_decay), lr=lr, betas=tuple(betas), eps=eps,
                             fused=fused, foreach=foreach)


def _adamw_rules(*, betas, fused, foreach, **_):
    if len(betas) != 2:
        yield "betas", f"needs two values (beta1, beta2), got {len(betas)}"
    if fused and foreach:
        yield "fused", "set fused or foreach to true, not both"


def sgd(param_groups: list[dict], *, lr: Positive = 1e-3, momentum: Fraction = 0.0, nesterov: bool = False,
        weight_decay: NonNegative = 0.0, dampening: Annotated[float, Bounds(ge=0, le=1)] = 0.0):
    """torch.optim.SGD; `weight_decay` (L2, added to the gradient) applies to the decayed group only."""
    import torch

    return torch.optim.SGD(_decayed(param_groups, weight_decay), lr=lr, momentum=momentum,
                           nesterov=nesterov, dampening=dampening)


def _sgd_rules(*, momentum, nesterov, dampening, **_):
    if nesterov and (momentum <= 0 or dampening != 0):
        yield "nesterov", f"needs momentum > 0 and dampening 0, got momentum {momentum} and dampening {dampening}"


def adafactor(param_groups: list[dict], *, lr: Optional[Positive] = None,
              scale_parameter: Optional[bool] = None, relative_step: Optional[bool] = None,
              warmup_init: bool = False, weight_decay: NonNegative = 0.0, clip_threshold: Positive = 1.0,
              beta1: Optional[Fraction] = None):
    """transformers' Adafactor.

    With `lr`, the scheduler drives that lr: relative_step and scale_parameter default to false.
    Without `lr`, Adafactor sets its own step size: relative_step must be true and
    scale_parameter defaults to true (Adafactor's defaults); `warmup_init` needs this mode.
    """
    from transformers.optimization import Adafactor

    own_steps = lr is None  # Adafactor's relative step size
    default_scale = own_steps if scale_parameter is None else scale_parameter
    return Adafactor(_decayed(param_groups, weight_decay), lr=lr, scale_parameter=default_scale,
                     relative_step=own_steps, warmup_init=warmup_init, weight_decay=weight_decay,
                     clip_threshold=clip_threshold, beta1=beta1)


def _adafactor_rules(*, lr, relative_step, warmup_init, **_):
    if lr is not None and relative_step:
        yield "relative_step", "cannot be true with an explicit lr; remove lr to let Adafactor set its own step size"
    if lr is None and relative_step is False:
        yield "relative_step", "false needs an explicit lr"
    if warmup_init and lr is not None:
        yield "warmup_init", "needs relative_step (no explicit lr)"


adamw.check, sgd.check, adafactor.check = _adamw_rules, _sgd_rules, _adafactor_rules
# Full-size state tensors per trained parameter, for the memory plan (see hookspecs.py).
adamw.state_tensors = 2  # momentum and variance
sgd.state_tensors = lambda *, momentum=0.0: 1 if momentum else 0  # the momentum buffer
adafactor.state_tensors = lambda *, beta1=None: 1 if beta1 else 0  # factored second moments are negligible


@hookimpl
def seqtune_register_optimizers():
    return {"adamw": adamw, "sgd": sgd, "adafactor": adafactor}
