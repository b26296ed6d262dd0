"""Weights, gradients and optimizer states on one GPU, and the working buffers beside them.

With Ψ parameters and N data-parallel GPUs, after the ZeRO paper (Rajbhandari et al., 2020, "ZeRO:
Memory Optimizations Toward Training Trillion Parameter Models", sections 3.1 and 5): mixed-precision
Adam keeps, per parameter, 2 bytes of 16-bit weights + 2 of 16-bit gradients + K = 12 of optimizer
states (fp32 master weights, momentum, variance): 16 bytes. ZeRO-1 holds 2 + 2 + K/N, ZeRO-2 holds
2 + (2 + K)/N and ZeRO-3 holds (2 + 2 + K)/N bytes per parameter.

Without DeepSpeed (DDP or one process) every GPU holds everything. Weights stay in the dtype they were
loaded in (w bytes: 4 for float32) — accelerate's bf16/fp16 is autocast, which casts per matmul and
leaves the weights alone — gradients have the weights' dtype, and torch's AdamW keeps its two states in
that dtype too: (w + w + 2w)·Ψ; fp32 is 4 + 4 + 8 = 16 bytes, with no separate master copy.

With DeepSpeed, bf16/fp16 casts the whole model to 16 bits, so p = 2 bytes of weights and of gradients,
and the ZeRO optimizer keeps K = 4 (fp32 master copy) + 4 per state. Without mixed precision p = w;
ZeRO-1/2 still clone an fp32 master partition (DeepSpeed's stage_1_and_2 optimizer always does), while
ZeRO-3 updates fp32 weights in place and ZeRO-0 hands the parameters to the torch optimizer as they are
(no master copy). offload_optimizer keeps optimizer states in CPU memory (ZeRO 1-3), and from ZeRO-2 on
the gradient partitions too (ZeRO-Offload: the GPU keeps only the reduce buckets); offload_params keeps
the ZeRO-3 weight partitions in CPU memory.

LoRA: the base weights are frozen (no gradients, no optimizer states); only the adapter's parameters
have them. Without DeepSpeed peft keeps adapters in fp32 (it upcasts 16-bit ones) — 4 + 4 + 8 bytes
each; DeepSpeed casts them with the model. ZeRO-3 partitions frozen weights too. QLoRA
(`model.quantization`) stores the frozen base's linear layers in 4 bits with their quantization
constants (quantization.py); the rest of the base and the adapters are as with LoRA.
"""
from __future__ import annotations

from typing import Optional

from framework.estimation.quantization import base_bytes
from framework.estimation.settings import GIB, MemorySettings
from framework.estimation.shapes import ModelShape

States = dict[str, int]  # weights, gradients, optimizer_states
Details = dict[str, str]


def model_states(shape: ModelShape, s: MemorySettings, lora_params: Optional[int], notes: list[str]
                 ) -> tuple[States, Details]:
    """Bytes of weights, gradients and optimizer states on one GPU, and how each was computed."""
    if s.zero_stage is None:
        for flag in ("offload_optimizer", "offload_params"):
            if getattr(s, flag):
                notes.append(f"launch.deepspeed.{flag}: needs DeepSpeed; ignored without it")
        return _ddp_states(shape, s, lora_params)
    return _zero_states(shape, s, lora_params, notes)


def _states_text(count: int) -> str:
    return f"{count} state{'s' if count != 1 else ''}"


def _base(shape: ModelShape, s: MemorySettings, p: int, dtype: str) -> tuple[int, str]:
    """The base model's weights at p bytes a parameter (`dtype`), or as a 4-bit base stores them: bytes,
    and how."""
    if s.quantization is None:
        return shape.num_parameters * p, f"{shape.num_parameters:,} × {p} B ({dtype})"
    return base_bytes(shape, s.quantization, p, dtype)


def _ddp_states(shape: ModelShape, s: MemorySettings, lora_params: Optional[int]) -> tuple[States, Details]:
    psi, w, lora = shape.num_parameters, s.weight_bytes, lora_params is not None
    trainable = lora_params if lora else psi
    a = 4 if lora else w  # bytes per trainable parameter
    base, how = _base(shape, s, w, s.weights_dtype)
    states = {"weights": base + (trainable * a if lora else 0), "gradients": trainable * a,
              "optimizer_states": trainable * a * s.optimizer_states}
    where = "every GPU (DDP)" if s.num_gpus > 1 else "one process"
    learned = f"{trainable:,} {'LoRA ' if lora else ''}params"
    details = {"weights": f"{how} on {where}"
                          + (f" + {trainable:,} LoRA params × 4 B (fp32)" if lora else ""),
               "gradients": f"{learned} × {a} B",
               "optimizer_states": f"{learned} × {_states_text(s.optimizer_states)} × {a} B "
                                   "(torch keeps them in the parameters' dtype)"}
    return states, details


def _zero_states(shape: ModelShape, s: MemorySettings, lora_params: Optional[int], notes: list[str]
                 ) -> tuple[States, Details]:
    psi, lora, stage = shape.num_parameters, lora_params is not None, s.zero_stage
    trainable = lora_params if lora else psi
    p = 2 if s.half else s.weight_bytes
    k, k_text = _zero_optimizer_bytes(s, p)
    base, how = _base(shape, s, p, {"bf16": "bfloat16", "fp16": "float16"}.get(s.precision, s.weights_dtype))
    bytes_ = {"weights": base + (trainable * p if lora else 0), "gradients": trainable * p,
              "optimizer_states": trainable * k}
    split = {part: "" for part in bytes_}
    for part, from_stage in (("optimizer_states", 1), ("gradients", 2), ("weights", 3)):
        if stage >= from_stage:
            bytes_[part], split[part] = -(-bytes_[part] // s.num_gpus), f" / {s.num_gpus} GPUs"
    _offload(s, bytes_, split, notes)
    what = f"{psi:,} params" + (f" + {trainable:,} LoRA params" if lora else "") + f" × {p} B"
    if s.quantization is not None:
        what = f"{how} + {trainable:,} LoRA params × {p} B"
    learned = f"{trainable:,} {'LoRA ' if lora else ''}params"
    details = {"weights": f"{what}{split['weights']} (ZeRO-{stage})",
               "gradients": f"{learned} × {p} B{split['gradients']}",
               "optimizer_states": f"{learned} × {k_text}{split['optimizer_states']}"}
    return bytes_, details


def _zero_optimizer_bytes(s: MemorySettings, p: int) -> tuple[int, str]:
    """K, the optimizer's bytes per trainable parameter under DeepSpeed, and how it is made up."""
    states = _states_text(s.optimizer_states)
    if s.zero_stage == 0 and not s.half:
        return s.optimizer_states * p, f"{states} × {p} B"  # the torch optimizer on the parameters as they are
    master = 0 if (s.zero_stage == 3 and p == 4) else 4
    k = master + 4 * s.optimizer_states
    return k, f"K = {k} B ({'fp32 master copy + ' if master else ''}{states} × 4 B)"


def _offload(s: MemorySettings, bytes_: States, split: Details, notes: list[str]) -> None:
    """Move offloaded parts to CPU memory (0 bytes here), or note why an offload flag is ignored."""
    if s.offload_optimizer and s.zero_stage == 0:
        notes.append("launch.deepspeed.offload_optimizer: needs ZeRO stage 1-3; ignored with stage 0")
    elif s.offload_optimizer:
        bytes_["optimizer_states"], split["optimizer_states"] = 0, " (offloaded to CPU)"
        if s.zero_stage >= 2:
            bytes_["gradients"], split["gradients"] = 0, " (partitions offloaded to CPU)"
    if s.offload_params and s.zero_stage != 3:
        notes.append(f"launch.deepspeed.offload_params: needs ZeRO stage 3; ignored with stage {s.zero_stage}")
    elif s.offload_params:
        bytes_["weights"], split["weights"] = 0, " (offloaded to CPU)"


def buffers(shape: ModelShape, s: MemorySettings, lora_params: Optional[int]) -> tuple[int, str]:
    """Working copies beyond the model states.

    - DDP over several GPUs: its gradient buckets are a second copy of the trainable gradients
      (accelerate leaves gradient_as_bucket_view off).
    - Autocast with fp32 weights: the 16-bit copy of every matmul weight made in the forward is kept
      for the backward (all of them at the end of the forward). With LoRA and gradient checkpointing,
      frozen weights' copies live one layer at a time; 4-bit weights have none (bitsandbytes
      dequantizes them itself), so only the output layer's is left.
    - Autocast with LoRA: the 16-bit copy of every fp32 adapter weight; autocast caches the casts of
      trainable leaf tensors until the forward ends, so all of them are held at once.
    - A 4-bit base: the largest weight dequantized for its matmul (quantization.QuantSpec.working_copy).
    - ZeRO-2/3: two reduce buckets of hidden² elements (accelerate's "auto" reduce_bucket_size).
    - ZeRO-3: the parameters gathered for the module being computed (at most the embedding matrix)
      plus the next layer, prefetched.
    """
    found: list[tuple[int, str]] = []
    vocab_matrix, lora = shape.vocab_size * shape.hidden_size, lora_params is not None
    if s.quantization is not None:
        size = s.quantization.working_copy(shape)
        found.append((size, f"one 4-bit weight dequantized to {s.quantization.compute_dtype} {size / GIB:.2f} GiB"))
    if s.zero_stage is None:
        if s.num_gpus > 1:
            size = (lora_params * 4) if lora else shape.num_parameters * s.weight_bytes
            found.append((size, f"DDP gradient buckets {size / GIB:.2f} GiB"))
        if s.half and s.weight_bytes == 4:
            layers = 0 if s.quantization else 1 if (lora and s.gradient_checkpointing) else shape.num_layers
            size = 2 * (layers * shape.layer_matmul_parameters() + vocab_matrix)
            found.append((size, f"autocast 16-bit weight copies {size / GIB:.2f} GiB"))
        if s.half and lora:
            found.append((2 * lora_params, f"autocast 16-bit adapter copies {2 * lora_params / GIB:.2f} GiB"))
        return sum(size for size, _ in found), "; ".join(text for _, text in found) or "none"
    p = 2 if s.half else s.weight_bytes
    if s.zero_stage >= 2:
        found.append((2 * shape.hidden_size ** 2 * p, f"ZeRO reduce buckets 2 × hidden² × {p} B"))
    if s.zero_stage == 3:
        layer = shape.layer_parameters()
        size = p * (max(vocab_matrix, layer) + layer)
        found.append((size, f"ZeRO-3 gathered params {size / GIB:.2f} GiB"))
    return sum(size for size, _ in found), "; ".join(text for _, text in found) or "none"


def reference_weights(shape: ModelShape, s: MemorySettings) -> tuple[int, str]:
    """A frozen copy of the model (no gradients, no optimizer states), in the trained weights' dtype,
    partitioned like them under ZeRO-3: bytes, and how they were computed."""
    p = 2 if s.zero_stage is not None and s.half else s.weight_bytes
    total, split = shape.num_parameters * p, ""
    if s.zero_stage == 3:
        total, split = -(-total // s.num_gpus), f" / {s.num_gpus} GPUs"
    return total, f"{shape.num_parameters:,} × {p} B{split}"
