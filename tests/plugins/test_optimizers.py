"""plugins.optimizers: `adamw` over the parameter groups the engine builds."""
from __future__ import annotations

import torch

from plugins.optimizers import adamw


def groups():
    decayed = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))]
    no_decay = [torch.nn.Parameter(torch.zeros(3))]
    return decayed, no_decay


def test_adamw_uses_the_given_groups():
    decayed, no_decay = groups()
    opt = adamw([{"params": decayed}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3)
    assert isinstance(opt, torch.optim.AdamW)
    assert len(opt.param_groups) == 2
    assert opt.param_groups[0]["params"] == decayed
    assert opt.param_groups[1]["params"] == no_decay


def test_weight_decay_only_on_groups_without_their_own():
    decayed, no_decay = groups()
    opt = adamw([{"params": decayed}, {"params": no_decay, "weight_decay": 0.0}], weight_decay=0.1)
    assert opt.param_groups[0]["weight_decay"] == 0.1
    assert opt.param_groups[1]["weight_decay"] == 0.0


def test_weight_decay_defaults_to_zero():
    decayed, _ = groups()
    assert adamw([{"params": decayed}]).param_groups[0]["weight_decay"] == 0.0


def test_options_reach_the_optimizer():
    decayed, _ = groups()
    opt = adamw([{"params": decayed}], lr=0.01, betas=[0.8, 0.95], eps=1e-6)
    group = opt.param_groups[0]
    assert group["lr"] == 0.01
    assert tuple(group["betas"]) == (0.8, 0.95)
    assert group["eps"] == 1e-6


def test_a_step_moves_the_parameters_and_decays_only_the_decayed_group():
    decayed = torch.nn.Parameter(torch.ones(4))
    kept = torch.nn.Parameter(torch.ones(4))
    opt = adamw([{"params": [decayed]}, {"params": [kept], "weight_decay": 0.0}], lr=0.1, weight_decay=0.5)
    decayed.grad = torch.zeros(4)
    kept.grad = torch.zeros(4)
    opt.step()
    # zero gradients: only decoupled weight decay moves a parameter (1 - lr * wd = 0.95)
    assert torch.allclose(decayed.detach(), torch.full((4,), 0.95))
    assert torch.equal(kept.detach(), torch.ones(4))
