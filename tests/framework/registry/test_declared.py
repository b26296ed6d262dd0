"""What plugins declare for planning is what the memory plan and the dry run use: the framework names
no plugin, so a third-party optimizer or scheduler is planned as exactly as a built-in one."""
from __future__ import annotations

import textwrap
from functools import partial
from pathlib import Path

import pytest

from framework.config import load_recipe
from framework.estimation.for_recipe import estimate_for_recipe
from framework.estimation.shapes import load_shape
from framework.registry import bind_parts, declared
from framework.registry.factories import optimizer_state_tensors

THIRD_PARTY = """\
from framework import hookimpl


def lion(param_groups, *, lr: float = 1e-4, momentum_dtype: str = "float32"):
    import torch

    return torch.optim.SGD(param_groups, lr=lr, momentum=0.9)


lion.state_tensors = 1  # one momentum buffer, as Lion keeps


def undeclared_adam(param_groups, *, lr: float = 1e-4):
    import torch

    return torch.optim.Adam(param_groups, lr=lr)


def stepped(optimizer, num_training_steps, *, warm: int = 3, floor: float = 0.0):
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warm))


stepped.warmup_steps = lambda num_training_steps, *, warm=3: warm


def plain(optimizer, num_training_steps):
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


@hookimpl
def seqtune_register_optimizers():
    return {"lion": lion, "undeclared_adam": undeclared_adam}


@hookimpl
def seqtune_register_schedulers():
    return {"stepped": stepped, "plain": plain}
"""


def test_declared_constants_functions_and_defaults():
    def factory(x, *, a: int = 1, b: int = 2):
        return x

    assert declared(factory, "state_tensors", default=7) == 7
    factory.state_tensors = 1
    assert declared(partial(factory, a=5), "state_tensors") == 1
    factory.warmup_steps = lambda total, *, a=1: total // 10 + a  # takes only the options it names
    assert declared(partial(factory, a=5, b=9), "warmup_steps", 100) == 15
    factory.warmup_steps = lambda total, **options: total + sum(options.values())  # or all of them
    assert declared(partial(factory, a=5, b=9), "warmup_steps", 100) == 114


def test_builtin_optimizers_declare_their_state_tensors():
    from plugins.optimizers import adafactor, adamw, sgd

    assert optimizer_state_tensors(adamw, "adamw") == (2, None)
    assert optimizer_state_tensors(partial(sgd, momentum=0.9), "sgd") == (1, None)
    assert optimizer_state_tensors(sgd, "sgd") == (0, None)
    assert optimizer_state_tensors(partial(adafactor, beta1=0.9), "adafactor") == (1, None)


@pytest.fixture
def recipe(tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch):
    """A quickstart recipe that loads the third-party module by dotted path; usable in and out of process."""
    (tmp_path / "seqtune_third_party.py").write_text(textwrap.dedent(THIRD_PARTY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "250")  # one table row per line in the subprocess's output
    path = tmp_path / "recipe.yaml"
    path.write_text(f"extends: {repo / 'recipes/quickstart.yaml'}\nplugins: [seqtune_third_party]\n"
                    f"output_dir: {tmp_path / 'out'}\n"
                    f"data: {{cache_dir: {tmp_path / 'cache'}, mixture: [{{source: "
                    f"{repo / 'recipes/quickstart/data/train.jsonl'}, count: 64}}]}}\n"
                    f"tokenizer: {{name_or_path: {repo / 'recipes/quickstart/tokenizer'}}}\n")
    return path


@pytest.mark.slow
def test_the_memory_plan_counts_the_state_tensors_an_optimizer_declares(recipe, seqtune):
    shape = load_shape(load_recipe(recipe).recipe.model, vocab_size=628)
    plans = {name: estimate_for_recipe(load_recipe(recipe, [f"optimizer={name}"]), shape)
             for name in ("adamw", "lion", "undeclared_adam")}
    gradients = plans["lion"].gradients
    assert plans["lion"].optimizer_states == gradients  # fp32, one state: as many bytes as the gradients
    assert plans["adamw"].optimizer_states == 2 * gradients
    assert plans["undeclared_adam"].optimizer_states == 2 * gradients  # assumed Adam-like, and said so
    assert any("'undeclared_adam' declares no state_tensors" in note for note in plans["undeclared_adam"].notes)
    # the CLI's plan (it reads the declaration from the plugins it bound) says the same
    lion = seqtune("check", recipe, "optimizer=lion", "--gpu", "24")
    assert lion.returncode == 0, lion.stderr
    row = next(line for line in lion.stdout.splitlines() if "optimizer states" in line)
    assert "× 1 state × 4 B" in row
    undeclared = seqtune("check", recipe, "optimizer=undeclared_adam", "--gpu", "24")
    assert "× 2 states × 4 B" in undeclared.stdout and "declares no state_tensors" in undeclared.stdout


@pytest.mark.slow
def test_the_dry_run_shows_the_warmup_a_scheduler_declares(recipe, seqtune):
    shown = seqtune("check", recipe, "--samples", "1", "scheduler={name: stepped, warm: 5}")
    assert shown.returncode == 0, shown.stderr
    assert "warmup steps: 5" in shown.stdout
    assert "warmup steps: unknown (scheduler 'plain' declares no warmup_steps)" in \
        seqtune("check", recipe, "--samples", "1", "scheduler=plain").stdout


@pytest.mark.slow
def test_the_dry_run_counts_packed_rows_as_the_strategy_declares(recipe, seqtune):
    parts = bind_parts(load_recipe(recipe, ["data.packing=bfd"]))
    assert parts.packing().packs_rows
    shown = seqtune("check", recipe, "--samples", "1", "data.packing=bfd")
    assert "effective batch: 16 packed rows" in shown.stdout
