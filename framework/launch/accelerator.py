"""The Accelerator a process trains with: DDP or one process on CUDA or the CPU, or DeepSpeed ZeRO."""
from __future__ import annotations

import os
from typing import Any

from framework.launch.deepspeed import deepspeed_config


def make_accelerator(recipe: Any) -> Any:
    """DDP (or one process) on CUDA or the CPU; DeepSpeed ZeRO when the recipe asks for it."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    launch = recipe.launch
    if launch.deepspeed is None:
        accelerator = Accelerator(cpu=launch.device == "cpu", mixed_precision=launch.mixed_precision)
    else:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        plugin = DeepSpeedPlugin(hf_ds_config=deepspeed_config(recipe, world))
        # On the CPU, DeepSpeed runs over gloo; Accelerator(cpu=True) would silently drop DeepSpeed.
        handlers = [InitProcessGroupKwargs(backend="gloo")] if launch.device == "cpu" else []
        accelerator = Accelerator(deepspeed_plugin=plugin, mixed_precision=launch.mixed_precision,
                                  kwargs_handlers=handlers)
    if launch.gpu_memory_gib is not None:
        cap_memory(accelerator.device, launch.gpu_memory_gib)
    return accelerator


def cap_memory(device: Any, gib: float) -> None:
    """Make PyTorch's allocator fail past `gib` on this device, as a GPU of that size would (the CUDA
    context and NCCL's buffers lie outside it, as they lie outside the memory plan)."""
    import torch

    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total), device)


def is_deepspeed(accelerator: Any) -> bool:
    """Whether DeepSpeed runs the model: it shards optimizer state, checkpoints it itself, and keeps
    its own gradient-accumulation windows."""
    return accelerator.distributed_type.name == "DEEPSPEED"
