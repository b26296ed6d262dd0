"""Combinations of recipe values that are each valid but impossible together.

Each check names the keys it reads and is skipped when one of them already has a problem, so a
schema error never hides these checks and never causes a spurious one.
"""
from __future__ import annotations

from collections.abc import Iterator

from framework.config.schema import Recipe
from framework.config.validate import Problems

Problem = tuple[str, str]  # (key path, message)


def check_combinations(recipe: Recipe, problems: Problems) -> None:
    """Add every impossible combination to `problems`, skipping checks that read a wrong key."""
    checks = ((("model", "tokenizer.name_or_path"), _model), (("launch",), _launch),
              (("model.attn_implementation", "launch.device"), _kernel))
    found = [found for reads, check in checks if not problems.touches(*reads) for found in check(recipe)]
    found += _mixture(recipe, problems)
    if recipe.eval is not None and not problems.touches("eval"):
        found += _eval(recipe)
    for key, message in found:
        problems.add(key, message)


def _model(recipe: Recipe) -> Iterator[Problem]:
    model = recipe.model
    if (model.name_or_path is None) == (model.config is None):
        yield "model", "set exactly one of model.name_or_path (load weights) or model.config (random init)"
    if model.config is not None and "model_type" not in model.config:
        yield "model.config", "needs a model_type (e.g. llama, qwen2, gemma2)"
    if model.quantization is not None:
        yield from _quantization(recipe)
    if recipe.tokenizer.name_or_path is None and model.name_or_path is None:
        yield "tokenizer.name_or_path", "missing: a model built from model.config has no tokenizer of its own"


def _quantization(recipe: Recipe) -> Iterator[Problem]:
    """What a 4-bit base (QLoRA) needs: LoRA adapters to train, bitsandbytes, and full-precision weights
    (read from the model's config.json where it is at hand: a local folder, the hub cache, model.config)."""
    from framework.model.quantization import installed, prequantized, prequantized_problem

    if recipe.lora is None:
        yield ("model.quantization", "a 4-bit base is frozen and trains only through LoRA adapters (QLoRA): add a "
               "lora section (lora: {r: 16}), or remove model.quantization")
    if not installed():
        yield "model.quantization", "needs the bitsandbytes package: pip install 'seqtune[qlora]'"
    if recipe.model.name_or_path is None:
        return
    from framework.errors import UserError
    from framework.estimation.shapes import model_config

    try:
        config, _ = model_config(recipe.model)
    except UserError:
        return  # not at hand here (not downloaded yet): training checks the config it loads
    method = prequantized(config)
    if method is not None:
        yield "model.name_or_path", prequantized_problem(recipe.model.name_or_path, method)


def _kernel(recipe: Recipe) -> Iterator[Problem]:
    """Kernels that train on CUDA GPUs only, in a recipe that says it runs on the CPU."""
    attention = recipe.model.attn_implementation
    if recipe.launch.device == "cpu" and (attention.startswith("flash_attention") or attention == "flex_attention"):
        yield ("model.attn_implementation", f"{attention} trains on CUDA GPUs only and launch.device is cpu: use "
               "sdpa (or auto), or launch.device=cuda")


def _mixture(recipe: Recipe, problems: Problems) -> Iterator[Problem]:
    """Per entry, so that a wrong key in one entry does not hide a problem of another."""
    if recipe.data is None or problems.touches("data.mixture") and not recipe.data.mixture:
        return
    if not recipe.data.mixture:
        yield "data.mixture", "is empty; add at least one source"
    for i, entry in enumerate(recipe.data.mixture):
        if problems.touches(f"data.mixture[{i}]"):  # e.g. a misspelt fraction: the entry lacks one
            continue
        if (entry.fraction is None) == (entry.count is None):
            yield (f"data.mixture[{i}]", "set exactly one of fraction (share of rows, 1.0 = all) "
                   "or count (number of rows)")


def _eval(recipe: Recipe) -> list[Problem]:
    held = recipe.eval
    if bool(held.mixture) == (held.split is not None):
        return [("eval", "set exactly one of eval.mixture (held-out sources) or eval.split (rows held out of "
                 "data.mixture)")]
    if held.split is not None and (held.split == 0 or (held.split > 1 and held.split != int(held.split))):
        return [("eval.split", "a share of rows below 1 (0.05) or a whole number of rows (500)")]
    found = [(f"eval.mixture[{i}]", "set exactly one of fraction (share of rows, 1.0 = all) or count (number of rows)")
             for i, entry in enumerate(held.mixture) if (entry.fraction is None) == (entry.count is None)]
    if held.every_steps is None:  # one evaluation, after the last step: nothing to compare it with
        found += [(f"eval.{key}", "needs eval.every_steps (evaluations during training to compare)")
                  for key in ("keep_best", "early_stopping_patience") if getattr(held, key) not in (False, None)]
    return found


def _launch(recipe: Recipe) -> Iterator[Problem]:
    launch = recipe.launch
    if launch.machine_rank >= launch.num_machines:
        yield "launch.machine_rank", f"must be below launch.num_machines ({launch.num_machines})"
    if launch.num_processes % launch.num_machines:
        yield ("launch.num_processes", f"{launch.num_processes} processes cannot be split evenly "
               f"over {launch.num_machines} machines (num_processes counts all machines)")
    if launch.num_processes % launch.sequence_parallel:
        yield ("launch.sequence_parallel", f"{launch.sequence_parallel} does not divide launch.num_processes "
               f"({launch.num_processes}): each group of sequence_parallel processes shares one sequence")
    ds = launch.deepspeed
    if ds is not None and ds.offload_params and ds.zero_stage != 3:
        yield "launch.deepspeed.offload_params", "needs launch.deepspeed.zero_stage=3"
