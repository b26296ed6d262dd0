"""What known GPUs can do: their memory and peak dense FLOP/s, and MFU against that peak.

Peak figures are the vendors' dense (no sparsity) tensor-core numbers for bf16/fp16 with fp32
accumulation; MFU against them follows the PaLM paper's 6 x parameters x tokens/s estimate.
"""
from __future__ import annotations

from dataclasses import dataclass

from framework.errors import UserError, did_you_mean


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


def mfu(num_parameters: int, tokens_per_s: float, tflops_per_device: float | None, devices: int) -> float | None:
    """Model FLOPs utilisation: 6 x parameters x tokens/s over the devices' peak FLOP/s."""
    if not tflops_per_device:
        return None
    return 6 * num_parameters * tokens_per_s / (tflops_per_device * 1e12 * devices)


def resolve_gpu(spec: str) -> tuple[str, float]:
    """`--gpu`: a table key (3090, h100, ...) or a memory size in GiB -> (name, GiB)."""
    if spec.lower() in GPUS:
        found = GPUS[spec.lower()]
        return found.name, found.memory_gib
    try:
        return "GPU", float(spec)
    except ValueError:
        prefixed = [key for key in GPUS if key.startswith(spec.lower())]
        hint = f"; did you mean one of: {', '.join(prefixed)}?" if prefixed else did_you_mean(spec.lower(), GPUS)
        raise UserError(f"--gpu: unknown GPU '{spec}'{hint} (or give its memory in GiB, e.g. --gpu 24)") from None
