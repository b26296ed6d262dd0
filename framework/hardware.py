"""What the hardware can do: peak dense FLOP/s and memory of known GPUs, and peak memory used.

Peak figures are the vendors' dense (no sparsity) tensor-core numbers for bf16/fp16 with fp32
accumulation; MFU against them follows the PaLM paper's 6 x parameters x tokens/s estimate.
"""
from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    bf16_tflops: float


GPUS = {
    "3090": Gpu("NVIDIA GeForce RTX 3090", 24, 71),
    "4090": Gpu("NVIDIA GeForce RTX 4090", 24, 165),
    "a100-40": Gpu("NVIDIA A100 40GB", 40, 312),
    "a100-80": Gpu("NVIDIA A100 80GB", 80, 312),
    "h100": Gpu("NVIDIA H100 80GB (SXM)", 80, 989),
    "h200": Gpu("NVIDIA H200 (SXM)", 141, 989),
}
# Substrings of torch.cuda.get_device_name() -> table key, most specific first.
_DEVICE_NAMES = (("H200", "h200"), ("H100", "h100"), ("A100-SXM4-80GB", "a100-80"), ("A100 80GB", "a100-80"),
                 ("A100", "a100-40"), ("4090", "4090"), ("3090", "3090"))


def gpu_from_device_name(device_name: str) -> Gpu | None:
    for fragment, key in _DEVICE_NAMES:
        if fragment in device_name:
            return GPUS[key]
    return None


def peak_tflops(configured: float | None) -> float | None:
    """The recipe's logging.peak_tflops, else the table's figure for this GPU, else None (CPU)."""
    if configured:
        return configured
    import torch

    if not torch.cuda.is_available():
        return None
    gpu = gpu_from_device_name(torch.cuda.get_device_name())
    return gpu.bf16_tflops if gpu else None


def mfu(num_parameters: int, tokens_per_s: float, tflops_per_device: float | None, devices: int) -> float | None:
    """Model FLOPs utilisation: 6 x parameters x tokens/s over the devices' peak FLOP/s."""
    if not tflops_per_device:
        return None
    return 6 * num_parameters * tokens_per_s / (tflops_per_device * 1e12 * devices)


def peak_memory_gib(device: Any) -> float:
    """Peak GPU memory allocated by torch on this device, or this process's peak RSS on the CPU."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)
