"""Checks of this machine against the recipe, made before anything is loaded: each problem is one
line naming the override that fixes it."""
from __future__ import annotations

import importlib.util

from framework.config.schema import Recipe
from framework.errors import UserError
from framework.model.attention import on_gpu


def preflight(recipe: Recipe) -> None:
    """Fail fast, one line per problem with the override that fixes it, before loading anything."""
    import torch

    problems = []
    attn = recipe.model.attn_implementation
    gpus, gpu = torch.cuda.device_count(), on_gpu(recipe.launch)
    if attn.startswith("flash_attention"):
        missing = [what for what, ok in (("the flash-attn package", importlib.util.find_spec("flash_attn")),
                                         ("a CUDA GPU", gpu)) if not ok]
        if missing:
            problems.append(f"model.attn_implementation={attn} needs {' and '.join(missing)}, not found "
                            "here: override model.attn_implementation=sdpa (or auto)")
    if attn == "flex_attention" and not gpu:
        problems.append("model.attn_implementation=flex_attention trains on CUDA GPUs only (PyTorch's flex "
                        "attention has no backward on the CPU): override model.attn_implementation=sdpa (or auto)")
    per_machine = recipe.launch.num_processes // recipe.launch.num_machines
    if recipe.launch.device == "cuda" or (per_machine > 1 and recipe.launch.device == "auto"):
        if gpus < per_machine:
            problems.append(f"launch.num_processes={recipe.launch.num_processes} needs {per_machine} "
                            f"CUDA GPU(s) on this machine, found {gpus}: override "
                            "launch.num_processes=1 launch.device=cpu for a CPU run")
    problems += _memory_cap(recipe.launch.gpu_memory_gib, gpu)
    if recipe.launch.deepspeed is not None and importlib.util.find_spec("deepspeed") is None:
        problems.append("launch.deepspeed needs the deepspeed package: pip install 'seqtune[deepspeed]',"
                        " or override launch.deepspeed=null")
    if problems:
        raise UserError(problems)


def _memory_cap(gib: float | None, gpu: bool) -> list[str]:
    """launch.gpu_memory_gib caps CUDA memory, so it needs a GPU at least that large."""
    import torch

    if gib is None:
        return []
    if not gpu:
        return [f"launch.gpu_memory_gib={gib:g} caps CUDA memory and this run uses no GPU: override "
                "launch.gpu_memory_gib=null"]
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    if gib > total:
        return [f"launch.gpu_memory_gib={gib:g} is more than this GPU's {total:.1f} GiB: override a smaller "
                "launch.gpu_memory_gib, or null"]
    return []
