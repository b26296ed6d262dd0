"""The Accelerator a process trains with: DDP or one process on CUDA or the CPU, or DeepSpeed ZeRO."""
from __future__ import annotations

import os
from typing import Any, Callable

from framework.launch.deepspeed import deepspeed_config


def make_accelerator(recipe: Any) -> Any:
    """DDP (or one process) on CUDA or the CPU; DeepSpeed ZeRO when the recipe asks for it."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    from framework.model.attention import on_gpu

    launch = recipe.launch
    if launch.deepspeed is None:
        accelerator = Accelerator(cpu=not on_gpu(launch), mixed_precision=launch.mixed_precision)
    else:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        plugin = DeepSpeedPlugin(hf_ds_config=deepspeed_config(recipe, world))
        # On the CPU, DeepSpeed runs over gloo; Accelerator(cpu=True) would silently drop DeepSpeed.
        handlers = [] if on_gpu(launch) else [InitProcessGroupKwargs(backend="gloo")]
        accelerator = Accelerator(deepspeed_plugin=plugin, mixed_precision=launch.mixed_precision,
                                  kwargs_handlers=handlers)
    if launch.gpu_memory_gib is not None:
        cap_memory(accelerator.device, launch.gpu_memory_gib)
    return accelerator


def cap_memory(device: Any, gib: float) -> None:
    """Make PyTorch's allocator fail past `gib` on this device, as a GPU of that size would (the CUDA
    context and NCCL's buffers lie outside it, as they lie outside the memory plan)."""
    import torch

    index = cuda_index(torch.device(device), torch.cuda.current_device)
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total), index)


def cuda_index(device: Any, current: Callable[[], int]) -> int:
    """The index of a CUDA device. An unlaunched process's Accelerator gives `cuda` without one,
    meaning the current device, and set_per_process_memory_fraction refuses a device without one."""
    if device.type != "cuda":
        raise ValueError(f"{device} is not a CUDA device")
    return current() if device.index is None else device.index


def is_deepspeed(accelerator: Any) -> bool:
    """Whether DeepSpeed runs the model: it shards optimizer state, checkpoints it itself, and keeps
    its own gradient-accumulation windows."""
    return accelerator.distributed_type.name == "DEEPSPEED"
