"""plugins.optimizers: `adamw`, `sgd` and `adafactor` over the parameter groups the engine builds."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from framework.config.schema import Component
from framework.config.validate import Problems
from framework.model.loading import param_groups
from framework.registry import build_registry
from plugins.optimizers import adafactor, adamw, sgd


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


# -- over the engine's parameter groups of a tiny real model -------------------------------------

DECAYED = {"0.weight"}  # the engine decays matrices only


def tiny_model() -> torch.nn.Module:
    """A Linear (decayed weight, undecayed bias) and a LayerNorm (both undecayed)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))


def train(make, steps: int = 1, **options):
    """Build `make` over the engine's groups of a fresh tiny model and take `steps` real steps.

    Returns the optimizer, the weights before each step and after the last (w[0] .. w[steps]),
    and the gradients of each step (g[0] .. g[steps - 1]), all by parameter name.
    """
    model = tiny_model()
    opt = make(param_groups(model), **options)
    weights, gradients = [], []
    for seed in range(steps):
        weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed + 1)
        x, target = torch.randn(3, 4), torch.randn(3, 4)
        torch.nn.functional.mse_loss(model(x), target).backward()
        gradients.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
        opt.step()
    weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return opt, weights, gradients


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_the_engine_groups_decay_only_the_matrix():
    groups = param_groups(tiny_model())
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert groups[0]["params"][0].ndim == 2


def test_sgd_step_is_w_minus_lr_g():
    opt, w, g = train(sgd, lr=0.1)
    assert isinstance(opt, torch.optim.SGD)
    for name in w[0]:
        assert close(w[1][name], w[0][name] - 0.1 * g[0][name]), name
        assert not torch.equal(w[1][name], w[0][name]), name


def test_sgd_momentum_and_dampening_over_two_steps():
    _, w, g = train(sgd, steps=2, lr=0.1, momentum=0.9, dampening=0.25)
    for name in w[0]:
        # the first step's buffer is the gradient itself; later ones dampen the new gradient
        buf2 = 0.9 * g[0][name] + (1 - 0.25) * g[1][name]
        assert close(w[1][name], w[0][name] - 0.1 * g[0][name]), name
        assert close(w[2][name], w[1][name] - 0.1 * buf2), name


def test_sgd_nesterov_looks_ahead():
    _, w, g = train(sgd, steps=2, lr=0.1, momentum=0.5, nesterov=True)
    for name in w[0]:
        buf2 = 0.5 * g[0][name] + g[1][name]
        assert close(w[1][name], w[0][name] - 0.1 * (g[0][name] + 0.5 * g[0][name])), name
        assert close(w[2][name], w[1][name] - 0.1 * (g[1][name] + 0.5 * buf2)), name


def test_sgd_weight_decay_only_on_the_decayed_group():
    opt, w, g = train(sgd, lr=0.1, weight_decay=0.5)
    assert [group["weight_decay"] for group in opt.param_groups] == [0.5, 0.0]
    for name in w[0]:
        wd = 0.5 if name in DECAYED else 0.0  # L2: added to the gradient
        assert close(w[1][name], w[0][name] - 0.1 * (g[0][name] + wd * w[0][name])), name


@pytest.mark.parametrize("options, expected", [
    ({"nesterov": True}, "optimizer.nesterov: needs momentum > 0 and dampening 0"),
    ({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, "optimizer.nesterov: needs momentum > 0 and dampening 0"),
    ({"nesterov": True, "momentum": -0.5}, "optimizer.momentum: must be at least 0 and below 1"),
])
def test_sgd_nesterov_needs_momentum_and_no_dampening(options, expected):
    factory, lines = bind("sgd", **options)  # checked when the recipe is bound, before any torch object
    assert factory is None and len(lines) == 1 and expected in lines[0], lines


@pytest.mark.parametrize("options, foreach, fused", [
    ({}, None, None),
    ({"foreach": True}, True, None),
    ({"foreach": False}, False, None),
    ({"fused": True}, None, True),
    ({"fused": True, "foreach": False}, False, True),
])
def test_adamw_kernel_options_reach_torch_and_compute_the_same_step(options, foreach, fused):
    opt, w, _ = train(adamw, steps=2, lr=0.01, weight_decay=0.1, **options)
    assert opt.defaults["foreach"] is foreach
    assert opt.defaults["fused"] is fused
    _, reference, _ = train(adamw, steps=2, lr=0.01, weight_decay=0.1, foreach=False)
    for name in w[0]:
        assert torch.allclose(w[2][name], reference[2][name], rtol=1e-5, atol=1e-6), name
        assert not torch.equal(w[2][name], w[0][name]), name


def test_adamw_fused_and_foreach_together_is_an_error():
    factory, lines = bind("adamw", fused=True, foreach=True)
    assert factory is None and lines == ["recipe.yaml: optimizer.fused: set fused or foreach to true, not both"]


def test_adamw_step_decays_only_the_decayed_group():
    _, decayed, _ = train(adamw, lr=0.01, weight_decay=0.5)
    _, plain, _ = train(adamw, lr=0.01, weight_decay=0.0)
    for name in plain[0]:
        # decoupled decay: the weight shrinks by lr * wd * w before the Adam update
        decay = 0.01 * 0.5 * plain[0][name] if name in DECAYED else torch.zeros_like(plain[0][name])
        assert close(decayed[1][name], plain[1][name] - decay), name
        assert not torch.equal(plain[1][name], plain[0][name]), name


# -- adafactor ------------------------------------------------------------------------------------

def test_adafactor_with_lr_moves_vectors_by_lr_times_the_gradient_sign():
    from transformers.optimization import Adafactor

    opt, w, g = train(adafactor, lr=0.01)
    assert isinstance(opt, Adafactor)
    group = opt.param_groups[0]
    assert (group["lr"], group["relative_step"], group["scale_parameter"]) == (0.01, False, False)
    # step 1 of an unfactored (1-D) parameter: update = g / sqrt(g^2) = sign(g), RMS 1, times lr
    for name in ("0.bias", "1.weight", "1.bias"):
        assert close(w[1][name], w[0][name] - 0.01 * torch.sign(g[0][name])), name
    # the matrix takes the factored update, clipped to RMS <= clip_threshold, times lr
    delta = w[1]["0.weight"] - w[0]["0.weight"]
    assert 0 < delta.pow(2).mean().sqrt() <= 0.01 * (1 + 1e-6)
    assert torch.equal(torch.sign(delta), -torch.sign(g[0]["0.weight"]))


def test_adafactor_lr_scales_the_step():
    _, small, _ = train(adafactor, lr=0.01)
    _, large, _ = train(adafactor, lr=0.03)
    for name in small[0]:
        assert close(large[1][name] - large[0][name], 3 * (small[1][name] - small[0][name])), name


def test_adafactor_clip_threshold_bounds_the_update():
    _, w, g = train(adafactor, lr=0.01, clip_threshold=0.5)
    assert close(w[1]["1.weight"], w[0]["1.weight"] - 0.005 * torch.sign(g[0]["1.weight"]))


def test_adafactor_weight_decay_only_on_the_decayed_group():
    opt, decayed, _ = train(adafactor, lr=0.01, weight_decay=0.5)
    assert [group["weight_decay"] for group in opt.param_groups] == [0.5, 0.0]
    _, plain, _ = train(adafactor, lr=0.01)
    for name in plain[0]:
        decay = 0.5 * 0.01 * plain[0][name] if name in DECAYED else torch.zeros_like(plain[0][name])
        assert close(decayed[1][name], plain[1][name] - decay), name


def test_adafactor_beta1_keeps_a_first_moment():
    opt, _, _ = train(adafactor, lr=0.01, beta1=0.9)
    assert opt.param_groups[0]["beta1"] == 0.9
    assert "exp_avg" in opt.state[opt.param_groups[1]["params"][0]]


def test_adafactor_without_lr_takes_relative_steps_scaled_by_the_parameter():
    opt, w, g = train(adafactor)
    group = opt.param_groups[0]
    assert (group["lr"], group["relative_step"], group["scale_parameter"]) == (None, True, True)
    # step 1: relative step min(1e-2, 1/sqrt(1)) = 0.01, times max(1e-3, RMS(p)):
    # the LayerNorm weight is ones (RMS 1), its bias zeros (scale 1e-3)
    assert close(w[1]["1.weight"], w[0]["1.weight"] - 0.01 * torch.sign(g[0]["1.weight"]))
    assert close(w[1]["1.bias"], w[0]["1.bias"] - 1e-5 * torch.sign(g[0]["1.bias"]))


def test_adafactor_warmup_init_starts_with_tiny_steps():
    _, w, g = train(adafactor, warmup_init=True)
    # step 1 with warmup_init: relative step 1e-6 * 1, times RMS 1 of the LayerNorm weight
    assert close(w[1]["1.weight"], w[0]["1.weight"] - 1e-6 * torch.sign(g[0]["1.weight"]))


def test_adafactor_without_lr_can_turn_off_parameter_scaling():
    _, w, g = train(adafactor, scale_parameter=False)
    assert close(w[1]["1.bias"], w[0]["1.bias"] - 0.01 * torch.sign(g[0]["1.bias"]))


def test_adafactor_with_lr_may_scale_by_the_parameter():
    opt, w, g = train(adafactor, lr=0.01, scale_parameter=True)
    assert opt.param_groups[0]["scale_parameter"] is True
    assert close(w[1]["1.bias"], w[0]["1.bias"] - 1e-5 * torch.sign(g[0]["1.bias"]))


@pytest.mark.parametrize("options, message", [
    ({"lr": 0.01, "relative_step": True}, "relative_step: cannot be true with an explicit lr"),
    ({"relative_step": False}, "relative_step: false needs an explicit lr"),
    ({"lr": 0.01, "warmup_init": True}, "warmup_init: needs relative_step"),
    ({"relative_step": False, "warmup_init": True}, "relative_step: false needs an explicit lr"),
])
def test_adafactor_option_combinations_that_are_errors(options, message):
    factory, lines = bind("adafactor", **options)
    assert factory is None and len(lines) == 1 and f"optimizer.{message}" in lines[0], lines


# -- through the registry, as a recipe selects them ----------------------------------------------

def bind(name: str, **options):
    problems = Problems(lambda key: "recipe.yaml")
    factory = build_registry().bind("optimizers", Component(name, options), problems, "optimizer")
    return factory, problems.lines


def test_all_optimizers_are_registered():
    assert {"adamw", "sgd", "adafactor"} <= set(build_registry().entries["optimizers"])


def test_recipe_options_bind_and_build():
    factory, lines = bind("sgd", lr=1, momentum=0.9, nesterov=True)
    assert lines == []
    opt = factory(param_groups(tiny_model()))
    assert opt.defaults["lr"] == 1.0 and isinstance(opt.defaults["lr"], float)  # an int lr becomes a float
    assert opt.defaults["nesterov"] is True
    factory, lines = bind("adamw", foreach=True)
    assert lines == [] and factory(param_groups(tiny_model())).defaults["foreach"] is True


def test_unknown_option_is_a_recipe_error():
    factory, lines = bind("sgd", nestrov=True)
    assert factory is None
    assert lines == ["recipe.yaml: optimizer.nestrov: unknown option; did you mean 'nesterov'?"]


@pytest.mark.parametrize("name, options, line", [
    ("sgd", {"nesterov": "yes"}, "recipe.yaml: optimizer.nesterov: expected bool, got str"),
    ("adamw", {"foreach": "yes"}, "recipe.yaml: optimizer.foreach: expected bool, got str"),
    ("adafactor", {"lr": "fast"}, "recipe.yaml: optimizer.lr: expected float, got str"),
])
def test_wrong_type_is_a_recipe_error(name, options, line):
    factory, lines = bind(name, **options)
    assert factory is None
    assert lines == [line]


@pytest.mark.parametrize("name, options, line", [
    ("adamw", {"lr": -1e-5}, "optimizer.lr: must be above 0, got -1e-05"),
    ("adamw", {"lr": 0}, "optimizer.lr: must be above 0, got 0"),
    ("adamw", {"betas": [0.9, 1.0]}, "optimizer.betas: must be at least 0 and below 1, got [0.9, 1.0]"),
    ("adamw", {"betas": [0.9]}, "optimizer.betas: needs two values (beta1, beta2), got 1"),
    ("adamw", {"eps": 0.0}, "optimizer.eps: must be above 0, got 0.0"),
    ("adamw", {"weight_decay": -0.1}, "optimizer.weight_decay: must be at least 0, got -0.1"),
    ("sgd", {"momentum": 1.5}, "optimizer.momentum: must be at least 0 and below 1, got 1.5"),
    ("sgd", {"dampening": 2}, "optimizer.dampening: must be between 0 and 1, got 2"),
    ("adafactor", {"lr": -1.0}, "optimizer.lr: must be above 0, got -1.0"),
    ("adafactor", {"lr": 1e-3, "clip_threshold": 0}, "optimizer.clip_threshold: must be above 0, got 0"),
    ("adafactor", {"beta1": 1.0}, "optimizer.beta1: must be at least 0 and below 1, got 1.0"),
])
def test_option_values_out_of_bounds_are_recipe_errors(name, options, line):
    factory, lines = bind(name, **options)
    assert factory is None and lines == [f"recipe.yaml: {line}"]


def test_every_numeric_option_of_a_builtin_optimizer_declares_bounds():
    import typing

    from plugins import optimizers

    for factory in (optimizers.adamw, optimizers.sgd, optimizers.adafactor):
        hints = typing.get_type_hints(factory, include_extras=True)
        for name, hint in hints.items():
            if name in ("param_groups", "return") or "bool" in str(hint):
                continue
            assert "Bounds(" in str(hint), f"{factory.__name__}.{name} has no bounds: {hint}"


def test_importing_the_module_stays_cheap():
    """`seqtune plugins` imports every plugin module: torch and transformers load in the factories."""
    code = "import sys, plugins.optimizers; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
