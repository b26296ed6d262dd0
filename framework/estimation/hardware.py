"""What known GPUs can do: their memory and peak dense FLOP/s, and MFU against that peak.

Peak figures are the vendors' dense (no sparsity) tensor-core numbers for bf16/fp16 with fp32
accumulation; MFU against them counts the model's FLOPs as the PaLM paper does (`model_flops`).
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
    "h100-pcie": Gpu("NVIDIA H100 PCIe", 80, 756),  # lower clocks and power than the SXM part
    "h100-nvl": Gpu("NVIDIA H100 NVL", 94, 835),
    "h200": Gpu("NVIDIA H200 (SXM)", 141, 989),
    "h200-nvl": Gpu("NVIDIA H200 NVL", 141, 835),
}
# Substrings of torch.cuda.get_device_name() -> table key, most specific first ("NVIDIA H100 80GB HBM3" is
# the SXM part; the PCIe and NVL parts name themselves).
_DEVICE_NAMES = (("H200 NVL", "h200-nvl"), ("H200", "h200"), ("H100 PCIe", "h100-pcie"), ("H100 NVL", "h100-nvl"),
                 ("H100", "h100"), ("A100-SXM4-80GB", "a100-80"), ("A100 80GB", "a100-80"), ("A100", "a100-40"),
                 ("4090", "4090"), ("3090", "3090"))


def gpu_from_device_name(device_name: str) -> Gpu | None:
    for fragment, key in _DEVICE_NAMES:
        if fragment in device_name:
            return GPUS[key]
    return None


@dataclass(frozen=True)
class FlopsShape:
    """What a training step's model FLOPs depend on: parameters, and the attention's depth and width."""

    num_parameters: int
    num_layers: int = 0
    attention_dim: int = 0  # heads x head_dim: the width of the query-key and attention-value products

    @classmethod
    def of(cls, model) -> "FlopsShape":
        config = getattr(model, "config", None)
        heads, hidden = getattr(config, "num_attention_heads", 0) or 0, getattr(config, "hidden_size", 0) or 0
        head_dim = getattr(config, "head_dim", None) or (hidden // heads if heads else 0)
        # ds_numel: a ZeRO-3 parameter's full size (its numel() is its shard's, often 0)
        parameters = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        return cls(parameters, getattr(config, "num_hidden_layers", 0) or 0, heads * head_dim)


def model_flops(shape: FlopsShape, tokens: int, attention_pairs: int) -> float:
    """FLOPs of a training step (forward and backward) over `tokens` real tokens.

    After the PaLM paper's appendix B: 6N per token for the weights, plus 12 x layers x attention_dim
    x T per token for attention's two products over a T-token sequence (2 FLOPs per multiply-add, x3
    for forward and backward). With causal masking a token at position t attends to t + 1 keys, so a
    document of l tokens costs half that: 6 x layers x attention_dim x l^2 in all. `attention_pairs`
    is the sum of l^2 over the step's documents, each packed document counted by its own length.
    """
    return 6 * shape.num_parameters * tokens + 6 * shape.num_layers * shape.attention_dim * attention_pairs


def mfu(flops_per_s: float, tflops_per_device: float | None, devices: int) -> float | None:
    """Model FLOPs utilisation: the model's FLOP/s (`model_flops`) over the devices' peak FLOP/s."""
    if not tflops_per_device:
        return None
    return flops_per_s / (tflops_per_device * 1e12 * devices)


ANY_GPU = "GPU"  # the name of a GPU given by its memory alone (--gpu 24)


def resolve_gpu(spec: str) -> tuple[str, float]:
    """`--gpu`: a table key (3090, h100, ...) or a memory size in GiB -> (name, GiB)."""
    if spec.lower() in GPUS:
        found = GPUS[spec.lower()]
        return found.name, found.memory_gib
    try:
        return ANY_GPU, float(spec)
    except ValueError:
        prefixed = [key for key in GPUS if key.startswith(spec.lower())]
        hint = f"; did you mean one of: {', '.join(prefixed)}?" if prefixed else did_you_mean(spec.lower(), GPUS)
        raise UserError(f"--gpu: unknown GPU '{spec}'{hint} (or give its memory in GiB, e.g. --gpu 24)") from None


def gpu_label(name: str, gib: float) -> str:
    """A resolved --gpu in words: `NVIDIA GeForce RTX 3090 (24 GiB)`, or `24 GiB GPU` for --gpu 24."""
    return f"{gib:g} GiB GPU" if name == ANY_GPU else f"{name} ({gib:g} GiB)"


def gpu_sizes(extra_gib: float | None = None) -> dict[float, list[str]]:
    """The known GPUs by memory size, smallest first ({24: ['3090', '4090'], ...}); `extra_gib`, a
    --gpu given by its memory alone, added as a size of its own."""
    sizes: dict[float, list[str]] = {}
    for key, gpu in GPUS.items():
        sizes.setdefault(gpu.memory_gib, []).append(key)
    if extra_gib is not None:
        sizes.setdefault(extra_gib, [])
    return dict(sorted(sizes.items()))
