"""plugins.optimizers: `adamw`, `sgd` and `adafactor` over the parameter groups the engine builds."""
from __future__ import annotations

import pytest
import torch

from framework import UserError
from framework.config.schema import Component
from framework.config.validate import Problems
from framework.modeling import param_groups
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

def tiny_model(seed: int = 0) -> torch.nn.Module:
    """A Linear (decayed weight, undecayed bias) and a LayerNorm (both undecayed), as the engine groups them."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))


def backward(model: torch.nn.Module, seed: int = 1) -> None:
    """A real loss and its gradients (fresh ones each call)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    x, target = torch.randn(3, 4), torch.randn(3, 4)
    torch.nn.functional.mse_loss(model(x), target).backward()


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


DECAYED = {"0.weight"}  # the engine decays matrices only


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_the_engine_groups_decay_only_the_matrix():
    groups = param_groups(tiny_model())
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert groups[0]["params"][0].ndim == 2


def test_sgd_step_is_w_minus_lr_g():
    model = tiny_model()
    opt = sgd(param_groups(model), lr=0.1)
    assert isinstance(opt, torch.optim.SGD)
    before = snapshot(model)
    backward(model)
    g = grads(model)
    opt.step()
    for name, p in model.named_parameters():
        assert close(p.detach(), before[name] - 0.1 * g[name]), name
        assert not torch.equal(p.detach(), before[name]), name


def test_sgd_momentum_and_dampening_over_two_steps():
    model = tiny_model()
    opt = sgd(param_groups(model), lr=0.1, momentum=0.9, dampening=0.25)
    w0 = snapshot(model)
    backward(model, seed=1)
    g1 = grads(model)
    opt.step()
    backward(model, seed=2)
    g2 = grads(model)
    opt.step()
    for name, p in model.named_parameters():
        # the first step's buffer is the gradient itself; later ones dampen the new gradient
        buf2 = 0.9 * g1[name] + (1 - 0.25) * g2[name]
        assert close(p.detach(), w0[name] - 0.1 * g1[name] - 0.1 * buf2), name


def test_sgd_nesterov_looks_ahead():
    model = tiny_model()
    opt = sgd(param_groups(model), lr=0.1, momentum=0.5, nesterov=True)
    w0 = snapshot(model)
    backward(model, seed=1)
    g1 = grads(model)
    opt.step()
    backward(model, seed=2)
    g2 = grads(model)
    opt.step()
    for name, p in model.named_parameters():
        buf2 = 0.5 * g1[name] + g2[name]
        w1 = w0[name] - 0.1 * (g1[name] + 0.5 * g1[name])
        assert close(p.detach(), w1 - 0.1 * (g2[name] + 0.5 * buf2)), name


def test_sgd_weight_decay_only_on_the_decayed_group():
    model = tiny_model()
    opt = sgd(param_groups(model), lr=0.1, weight_decay=0.5)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    before = snapshot(model)
    backward(model)
    g = grads(model)
    opt.step()
    for name, p in model.named_parameters():
        wd = 0.5 if name in DECAYED else 0.0
        assert close(p.detach(), before[name] - 0.1 * (g[name] + wd * before[name])), name


@pytest.mark.parametrize("options", [{"nesterov": True}, {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
                                     {"nesterov": True, "momentum": -0.5}])
def test_sgd_nesterov_needs_momentum_and_no_dampening(options):
    with pytest.raises(UserError, match="nesterov: needs momentum > 0 and dampening 0") as err:
        sgd(param_groups(tiny_model()), **options)
    assert len(err.value.problems) == 1 and "\n" not in err.value.problems[0]


def adamw_run(**options) -> tuple[torch.optim.Optimizer, dict[str, torch.Tensor]]:
    model = tiny_model()
    opt = adamw(param_groups(model), lr=0.01, weight_decay=0.1, **options)
    for seed in (1, 2):
        backward(model, seed)
        opt.step()
    return opt, snapshot(model)


@pytest.mark.parametrize("options, foreach, fused", [
    ({}, None, None),
    ({"foreach": True}, True, None),
    ({"foreach": False}, False, None),
    ({"fused": True}, None, True),
    ({"fused": True, "foreach": False}, False, True),
])
def test_adamw_kernel_options_reach_torch_and_compute_the_same_step(options, foreach, fused):
    opt, after = adamw_run(**options)
    assert opt.defaults["foreach"] is foreach
    assert opt.defaults["fused"] is fused
    _, reference = adamw_run(foreach=False)
    before = snapshot(tiny_model())
    for name in after:
        assert torch.allclose(after[name], reference[name], rtol=1e-5, atol=1e-6), name
        assert not torch.equal(after[name], before[name]), name


def test_adamw_fused_and_foreach_together_is_an_error():
    with pytest.raises(UserError, match="fused or foreach to true, not both"):
        adamw(param_groups(tiny_model()), fused=True, foreach=True)


def test_adamw_step_decays_only_the_decayed_group():
    def one_step(weight_decay):
        model = tiny_model()
        opt = adamw(param_groups(model), lr=0.01, weight_decay=weight_decay)
        before = snapshot(model)
        backward(model)
        opt.step()
        return before, snapshot(model)

    before, decayed = one_step(0.5)
    _, plain = one_step(0.0)
    for name in before:
        # decoupled decay: the weight shrinks by lr * wd * w before the Adam update
        decay = 0.01 * 0.5 * before[name] if name in DECAYED else torch.zeros_like(before[name])
        assert close(decayed[name], plain[name] - decay), name
        assert not torch.equal(plain[name], before[name]), name


# -- adafactor ------------------------------------------------------------------------------------

def adafactor_step(model: torch.nn.Module, **options) -> tuple[torch.optim.Optimizer, dict, dict, dict]:
    opt = adafactor(param_groups(model), **options)
    before = snapshot(model)
    backward(model)
    g = grads(model)
    opt.step()
    return opt, before, g, snapshot(model)


def test_adafactor_with_lr_moves_vectors_by_lr_times_the_gradient_sign():
    from transformers.optimization import Adafactor

    opt, before, g, after = adafactor_step(tiny_model(), lr=0.01)
    assert isinstance(opt, Adafactor)
    group = opt.param_groups[0]
    assert (group["lr"], group["relative_step"], group["scale_parameter"]) == (0.01, False, False)
    # step 1 of an unfactored (1-D) parameter: update = g / sqrt(g^2) = sign(g), RMS 1, times lr
    for name in ("0.bias", "1.weight", "1.bias"):
        assert close(after[name], before[name] - 0.01 * torch.sign(g[name])), name
    # the matrix takes the factored update, clipped to RMS <= clip_threshold, times lr
    delta = after["0.weight"] - before["0.weight"]
    assert 0 < delta.pow(2).mean().sqrt() <= 0.01 * (1 + 1e-6)
    assert torch.equal(torch.sign(delta), -torch.sign(g["0.weight"]))


def test_adafactor_lr_scales_the_step():
    _, before, _, small = adafactor_step(tiny_model(), lr=0.01)
    _, _, _, large = adafactor_step(tiny_model(), lr=0.03)
    for name in before:
        assert close(large[name] - before[name], 3 * (small[name] - before[name])), name


def test_adafactor_clip_threshold_bounds_the_update():
    _, before, g, after = adafactor_step(tiny_model(), lr=0.01, clip_threshold=0.5)
    assert close(after["1.weight"], before["1.weight"] - 0.005 * torch.sign(g["1.weight"]))


def test_adafactor_weight_decay_only_on_the_decayed_group():
    opt, before, _, decayed = adafactor_step(tiny_model(), lr=0.01, weight_decay=0.5)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    _, _, _, plain = adafactor_step(tiny_model(), lr=0.01)
    for name in before:
        decay = 0.5 * 0.01 * before[name] if name in DECAYED else torch.zeros_like(before[name])
        assert close(decayed[name], plain[name] - decay), name


def test_adafactor_beta1_keeps_a_first_moment():
    opt, _, _, _ = adafactor_step(tiny_model(), lr=0.01, beta1=0.9)
    state = opt.state[opt.param_groups[1]["params"][0]]
    assert opt.param_groups[0]["beta1"] == 0.9
    assert "exp_avg" in state


def test_adafactor_without_lr_takes_relative_steps_scaled_by_the_parameter():
    opt, before, g, after = adafactor_step(tiny_model())
    group = opt.param_groups[0]
    assert (group["lr"], group["relative_step"], group["scale_parameter"]) == (None, True, True)
    # step 1: relative step min(1e-2, 1/sqrt(1)) = 0.01, times max(1e-3, RMS(p)):
    # the LayerNorm weight is ones (RMS 1), its bias zeros (scale 1e-3)
    assert close(after["1.weight"], before["1.weight"] - 0.01 * torch.sign(g["1.weight"]))
    assert close(after["1.bias"], before["1.bias"] - 1e-5 * torch.sign(g["1.bias"]))


def test_adafactor_warmup_init_starts_with_tiny_steps():
    _, before, g, after = adafactor_step(tiny_model(), warmup_init=True)
    # step 1 with warmup_init: relative step 1e-6 * 1, times RMS 1 of the LayerNorm weight
    assert close(after["1.weight"], before["1.weight"] - 1e-6 * torch.sign(g["1.weight"]))


def test_adafactor_without_lr_can_turn_off_parameter_scaling():
    _, before, g, after = adafactor_step(tiny_model(), scale_parameter=False)
    assert close(after["1.bias"], before["1.bias"] - 0.01 * torch.sign(g["1.bias"]))


def test_adafactor_with_lr_may_scale_by_the_parameter():
    opt, before, g, after = adafactor_step(tiny_model(), lr=0.01, scale_parameter=True)
    assert opt.param_groups[0]["scale_parameter"] is True
    assert close(after["1.bias"], before["1.bias"] - 1e-5 * torch.sign(g["1.bias"]))


@pytest.mark.parametrize("options, message", [
    ({"lr": 0.01, "relative_step": True}, "relative_step: cannot be true with an explicit lr"),
    ({"relative_step": False}, "relative_step: false needs an explicit lr"),
    ({"lr": 0.01, "warmup_init": True}, "warmup_init: needs relative_step"),
    ({"relative_step": False, "warmup_init": True}, "relative_step: false needs an explicit lr"),
])
def test_adafactor_option_combinations_that_are_errors(options, message):
    with pytest.raises(UserError, match=message) as err:
        adafactor(param_groups(tiny_model()), **options)
    assert len(err.value.problems) == 1 and "\n" not in err.value.problems[0]


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


def test_importing_the_module_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, plugins.optimizers; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
