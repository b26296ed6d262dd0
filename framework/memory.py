"""How much GPU memory a training run needs, per GPU, before anything is loaded.

Pure Python and cheap to import (no torch, no transformers): `seqtune check` and `seqtune plan` use it
to say whether a recipe fits a GPU and how long max_seq_length can be. Every figure is an estimate
from the model's shape; each part of the plan says how it was computed.

Model states (weights, gradients, optimizer states) follow ZeRO (Rajbhandari et al., 2020, "ZeRO:
Memory Optimizations Toward Training Trillion Parameter Models", section 3.1 and 5): mixed-precision
Adam keeps, per parameter, 2 bytes of 16-bit weights + 2 of 16-bit gradients + K = 12 of optimizer
states (fp32 master weights, momentum, variance): 16 bytes. With N data-parallel GPUs,
ZeRO-1 holds 2 + 2 + K/N, ZeRO-2 holds 2 + (2 + K)/N and ZeRO-3 holds (2 + 2 + K)/N bytes per
parameter. See `_model_states` for every case (DDP, fp32, offloading, LoRA).

Activations follow the per-layer accounting of Korthikanti et al., 2022 ("Reducing Activation
Recomputation in Large Transformer Models", section 4.1: every tensor a layer keeps for its backward),
applied to Hugging Face's Llama/Qwen2/Gemma2/OLMo2 decoder layers: RMSNorm instead of LayerNorm, a
gated MLP, grouped-query attention, no dropout, and fused attention kernels. See
`layer_activation_bytes` for the formula.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from framework.shapes import BUNDLED_CONFIGS, ModelShape, bundled_models, load_shape

__all__ = ["BUNDLED_CONFIGS", "LoraSpec", "MemoryPlan", "ModelShape", "bundled_models", "load_shape",
           "max_seq_len", "plan_from_recipe", "plan_memory"]

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PRECISIONS = ("no", "bf16", "fp16")
ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")

# peft's "all-linear" adapts every linear layer of the decoder but the output layer (lm_head).
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


DEFAULT_OVERHEAD_GIB = 1.5  # CUDA context, cuBLAS/NCCL workspaces
DEFAULT_OVERHEAD_FRACTION = 0.05  # caching-allocator fragmentation, on top of everything else


@dataclass(frozen=True)
class LoraSpec:
    """The recipe's lora section as the planner needs it: rank, adapted layer names, dropout."""

    r: int
    target_modules: tuple[str, ...]
    dropout: float = 0.0

    @classmethod
    def from_recipe(cls, lora: Any) -> "LoraSpec":
        targets = lora.target_modules
        names = ALL_LINEAR if isinstance(targets, str) else tuple(str(t).rsplit(".", 1)[-1] for t in targets)
        return cls(r=int(lora.r), target_modules=names, dropout=float(lora.dropout))

    def _modules(self, shape: ModelShape) -> tuple[dict[str, tuple[int, int]], list[str]]:
        """(in, out) of each adapted layer the planner knows (per decoder layer, or lm_head once), and
        the names it does not know."""
        known = {**shape.projections(), "lm_head": (shape.hidden_size, shape.vocab_size)}
        unknown = [name for name in self.target_modules if name not in known]
        return {name: known[name] for name in dict.fromkeys(self.target_modules) if name in known}, unknown

    def unknown_modules(self, shape: ModelShape) -> list[str]:
        return self._modules(shape)[1]

    def trainable_parameters(self, shape: ModelShape) -> int:
        """r x (in + out) per adapted linear layer: lora_A is r x in, lora_B is out x r."""
        modules, _ = self._modules(shape)
        per_layer = sum(self.r * (i + o) for name, (i, o) in modules.items() if name != "lm_head")
        head = self.r * sum(modules["lm_head"]) if "lm_head" in modules else 0
        return shape.num_layers * per_layer + head

    def activation_bytes(self, shape: ModelShape, act_bytes: int) -> tuple[int, int]:
        """Bytes per token an adapter branch keeps for backward: (per decoder layer, lm_head).

        Each adapted layer keeps its lora_A output (r values, the input of lora_B) and, with dropout,
        its own dropped-out copy of the input (in values) plus the dropout mask (1 byte each).
        """
        modules, _ = self._modules(shape)

        def branch(in_features: int) -> int:
            return self.r * act_bytes + ((act_bytes + 1) * in_features if self.dropout > 0 else 0)

        per_layer = sum(branch(i) for name, (i, _) in modules.items() if name != "lm_head")
        head = branch(modules["lm_head"][0]) if "lm_head" in modules else 0
        return per_layer, head


# --- activations ---------------------------------------------------------------------------------

def layer_activation_bytes(shape: ModelShape, act_bytes: int, residual_bytes: int, attn: str) -> int:
    """Bytes one decoder layer keeps for its backward, per token, without the s^2 attention term.

    After Korthikanti et al. (2022), section 4.1, which counts, for a GPT layer in 16-bit,
    34·s·b·h + 5·a·s²·b bytes (s sequence length, b micro-batch, h hidden size, a heads): the inputs of
    every matmul, the Q/K/V the attention keeps, the MLP's intermediate tensors, the LayerNorm inputs,
    dropout masks, and the softmax output (the s² term). Adapted to Hugging Face's decoder layers, with
    e = act_bytes (2 in bf16/fp16, 4 in fp32), r = residual_bytes (the dtype of the residual stream;
    4 under autocast with fp32 weights), q = heads·head_dim, k = kv_heads·head_dim, I = intermediate,
    and n = the bytes of an RMSNorm's normalised values: r for Llama/Qwen2 (they cast back before
    multiplying by the weight), 4 for Gemma2/OLMo2 (they multiply in fp32):

    - RMSNorm before a projection (Llama/Qwen2/Gemma2: 2): (4 + n + e)·h — its input upcast to fp32
      (kept for the variance's gradient), its normalised values (kept for the weight's gradient) and
      its output as the projection keeps it (under autocast, the 16-bit copy the matmul makes).
    - RMSNorm after attention or the MLP (Gemma2: 2, OLMo2: 2): (4 + n)·h; OLMo2's q/k norms:
      (4 + n)·(q + k); OLMo2 has no pre-norm, so its q/k/v and gate/up projections keep their input
      themselves: 2·e·h.
    - Attention: e·(q + 2k' + q): Q, K and V as the kernel keeps them and its output (the o_proj
      input), where k' = k for flash_attention_* (native GQA) but q for sdpa and eager (transformers
      repeats K/V for every head when there is a padding mask or the kernel is eager); + 4·a for the
      fp32 log-sum-exp of fused kernels. No dropout (attention_dropout is 0), so no masks.
    - Gated MLP: 4·e·I (gate output, up output, act(gate), and act(gate)·up, the down_proj input).

    Eager attention also keeps a·s²·(4 + e) bytes per sequence: the fp32 softmax and its 16-bit copy
    (only fp32 when e = 4), and another a·s²·e with Gemma2's attention soft-capping; see
    `eager_score_bytes`. Flash attention and sdpa's fused kernels keep no s² tensor.

    Checked against the bytes torch's saved-tensor hooks see in one forward of transformers' Llama,
    Qwen2, Gemma2 and OLMo2 layers (CPU, fp32 and bf16): equal for eager up to each norm's per-token
    rsqrt; sdpa without a padding mask keeps K/V for the KV heads only, 2·e·(q - k) less than counted.
    """
    h, q, kv, inter = shape.hidden_size, shape.q_dim, shape.kv_dim, shape.intermediate_size
    e, r = act_bytes, residual_bytes
    n = 4 if shape.norm_in_fp32 else r
    pre_norm = (4 + n + e) * h
    post_norm = (4 + n) * h
    norms = {"pre": 2 * pre_norm,
             "sandwich": 2 * pre_norm + 2 * post_norm,
             "post": 2 * post_norm + (4 + n) * (q + kv) + 2 * e * h}[shape.norm_layout]
    kv_kept = kv if attn.startswith("flash_attention") else q
    attention = e * (q + 2 * kv_kept + q) + (4 * shape.num_heads if attn != "eager" else 0)
    mlp = 4 * e * inter
    return norms + attention + mlp


def final_norm_bytes(shape: ModelShape, act_bytes: int, residual_bytes: int) -> int:
    """Bytes per token the final RMSNorm keeps (a pre-norm of the lm_head; see layer_activation_bytes)."""
    n = 4 if shape.norm_in_fp32 else residual_bytes
    return (4 + n + act_bytes) * shape.hidden_size


def eager_score_bytes(shape: ModelShape, act_bytes: int) -> int:
    """Bytes per head per (query, key) pair that eager attention keeps: the fp32 softmax (transformers
    computes it in fp32), its copy in the activation dtype, and the tanh of Gemma2's soft-capping."""
    return 4 + (act_bytes if act_bytes != 4 else 0) + (act_bytes if shape.attn_softcapping else 0)


# --- the plan ------------------------------------------------------------------------------------

PART_LABELS = {"weights": "weights", "gradients": "gradients", "optimizer_states": "optimizer states",
               "activations": "activations", "logits": "logits + loss", "buffers": "buffers",
               "overhead": "overhead"}


@dataclass
class MemoryPlan:
    """Bytes per GPU, by part. `details` says how each part was computed; `notes` lists settings the
    plan ignored or could not account for."""

    weights: int
    gradients: int
    optimizer_states: int
    activations: int
    logits: int
    buffers: int
    overhead: int
    settings: dict[str, Any] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def model_states(self) -> int:
        return self.weights + self.gradients + self.optimizer_states

    @property
    def total(self) -> int:
        return sum(getattr(self, part) for part in PART_LABELS)

    @property
    def total_gib(self) -> float:
        return self.total / GIB

    def fits(self, gpu_gib: float) -> bool:
        """Whether the plan fits a GPU with `gpu_gib` GiB (e.g. framework.hardware.GPUS[key].memory_gib)."""
        return self.total <= gpu_gib * GIB

    def rows(self) -> list[tuple[str, str, str]]:
        """(part, size in GiB, how it was computed) for a table, ending with the total."""
        rows = [(label, f"{getattr(self, part) / GIB:.2f} GiB", self.details.get(part, ""))
                for part, label in PART_LABELS.items()]
        return rows + [("total", f"{self.total_gib:.2f} GiB", "per GPU")]

    def as_dict(self) -> dict[str, Any]:
        return {**{part: getattr(self, part) for part in PART_LABELS}, "total": self.total,
                "settings": dict(self.settings), "notes": list(self.notes)}


def plan_memory(shape: ModelShape, *, micro_batch: int, seq_len: int, num_gpus: int = 1,
                precision: str = "no", weights_dtype: str = "float32", zero_stage: Optional[int] = None,
                offload_optimizer: bool = False, offload_params: bool = False,
                gradient_checkpointing: bool = False, attn_implementation: str = "sdpa",
                lora_trainable_params: Optional[int] = None, lora: Optional[LoraSpec] = None,
                optimizer_states: int = 2, overhead_gib: float = DEFAULT_OVERHEAD_GIB,
                overhead_fraction: float = DEFAULT_OVERHEAD_FRACTION) -> MemoryPlan:
    """The memory one GPU needs for a training run.

    `precision` is accelerate's mixed_precision; `weights_dtype` the dtype the weights are loaded in;
    `zero_stage` None means no DeepSpeed (DDP, or a single process). `lora_trainable_params` (or
    `lora`, which also adds the adapters' activations) makes it a LoRA run: only the adapters train.
    `optimizer_states` is the number of full-size state tensors per trainable parameter (AdamW 2,
    SGD with momentum 1, plain SGD 0). Overhead is `overhead_gib` plus `overhead_fraction` of the rest.
    """
    _check_arguments(micro_batch, seq_len, num_gpus, precision, weights_dtype, zero_stage,
                     attn_implementation, optimizer_states, overhead_gib, overhead_fraction)
    notes: list[str] = []
    if lora_trainable_params is None and lora is not None:
        lora_trainable_params = lora.trainable_parameters(shape)
        unknown = lora.unknown_modules(shape)
        if unknown:
            notes.append(f"lora.target_modules: {', '.join(unknown)} not known to the planner; counted as "
                         "no parameters")
    states, details = _model_states(shape, num_gpus, precision, weights_dtype, zero_stage, offload_optimizer,
                                    offload_params, lora_trainable_params, optimizer_states, notes)
    buffers, details["buffers"] = _buffers(shape, num_gpus, precision, weights_dtype, zero_stage,
                                           gradient_checkpointing, lora_trainable_params)
    activations, details["activations"] = _activations(shape, micro_batch, seq_len, precision, weights_dtype,
                                                       zero_stage, gradient_checkpointing, attn_implementation,
                                                       lora)
    logits, details["logits"] = _logits(shape, micro_batch, seq_len, _act_bytes(precision, weights_dtype))
    rest = sum(states.values()) + buffers + activations + logits
    overhead = int(overhead_gib * GIB) + math.ceil(overhead_fraction * rest)
    details["overhead"] = (f"{overhead_gib:g} GiB fixed (CUDA context, workspaces) + {overhead_fraction:.0%} of the "
                           "rest (allocator fragmentation)")
    settings = {"micro_batch": micro_batch, "seq_len": seq_len, "num_gpus": num_gpus, "precision": precision,
                "weights_dtype": weights_dtype, "zero_stage": zero_stage, "offload_optimizer": offload_optimizer,
                "offload_params": offload_params, "gradient_checkpointing": gradient_checkpointing,
                "attn_implementation": attn_implementation, "lora_trainable_params": lora_trainable_params,
                "optimizer_states": optimizer_states, "num_parameters": shape.num_parameters}
    return MemoryPlan(weights=states["weights"], gradients=states["gradients"],
                      optimizer_states=states["optimizer_states"], activations=activations, logits=logits,
                      buffers=buffers, overhead=overhead, settings=settings, details=details, notes=notes)


def _check_arguments(micro_batch, seq_len, num_gpus, precision, weights_dtype, zero_stage, attn,
                     optimizer_states, overhead_gib, overhead_fraction) -> None:
    for name, value in (("micro_batch", micro_batch), ("seq_len", seq_len), ("num_gpus", num_gpus)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if weights_dtype not in DTYPE_BYTES:
        raise ValueError(f"weights_dtype must be one of {tuple(DTYPE_BYTES)}, got {weights_dtype!r}")
    if zero_stage not in (None, 0, 1, 2, 3):
        raise ValueError(f"zero_stage must be None (no DeepSpeed) or 0-3, got {zero_stage!r}")
    if attn not in ATTENTION:
        raise ValueError(f"attn_implementation must be one of {ATTENTION}, got {attn!r}")
    if optimizer_states < 0 or overhead_gib < 0 or overhead_fraction < 0:
        raise ValueError("optimizer_states, overhead_gib and overhead_fraction must not be negative")


def _half(precision: str) -> bool:
    return precision in ("bf16", "fp16")


def _act_bytes(precision: str, weights_dtype: str) -> int:
    """The dtype matmuls compute in: 16-bit under mixed precision, else the weights' own."""
    return 2 if _half(precision) else DTYPE_BYTES[weights_dtype]


def _ceil_div(value: int, n: int) -> int:
    return -(-value // n)


def _model_states(shape: ModelShape, n: int, precision: str, weights_dtype: str, zero_stage: Optional[int],
                  offload_optimizer: bool, offload_params: bool, lora_params: Optional[int],
                  optimizer_states: int, notes: list[str]) -> tuple[dict[str, int], dict[str, str]]:
    """Weights, gradients and optimizer states on one GPU, with Ψ parameters and N GPUs.

    Without DeepSpeed (DDP or one process): every GPU holds everything. Weights stay in the dtype they
    were loaded in (w bytes: 4 for float32) — accelerate's bf16/fp16 is autocast, which casts per
    matmul and leaves the weights alone — gradients have the weights' dtype, and torch's AdamW keeps
    its two states (momentum, variance) in that dtype too: (w + w + 2w)·Ψ; fp32 is 4 + 4 + 8 = 16
    bytes, with no separate master copy.

    With DeepSpeed: bf16/fp16 casts the whole model to 16 bits, so p = 2 bytes of weights and of
    gradients, and the ZeRO optimizer keeps K = 4 (fp32 master copy) + 4 per state (fp32 momentum,
    variance): K = 12 for AdamW, the ZeRO paper's 2 + 2 + 12 = 16 bytes. Without mixed precision p =
    w; ZeRO-1/2 still clone an fp32 master partition (DeepSpeed's stage_1_and_2 optimizer always
    does), while ZeRO-3 updates fp32 weights in place and ZeRO-0 hands the parameters to the torch
    optimizer as they are (K = 8: no master copy). Partitioned over N GPUs: ZeRO-1 the optimizer
    states (2Ψ + 2Ψ + KΨ/N), ZeRO-2 also the gradients (2Ψ + (2 + K)Ψ/N), ZeRO-3 also the weights
    ((2 + 2 + K)Ψ/N). offload_optimizer keeps optimizer states in CPU memory (ZeRO 1-3), and from
    ZeRO-2 on the gradient partitions too (ZeRO-Offload: the GPU keeps only the reduce buckets);
    offload_params keeps the ZeRO-3 weight partitions in CPU memory.

    LoRA: the base weights are frozen (no gradients, no optimizer states); only the adapter's
    parameters have them. Without DeepSpeed peft keeps adapters in fp32 (it upcasts 16-bit ones) —
    4 + 4 + 8 bytes each; DeepSpeed casts them with the model. ZeRO-3 partitions frozen weights too.
    """
    psi = shape.num_parameters
    lora = lora_params is not None
    trainable = lora_params if lora else psi
    states_txt = f"{optimizer_states} state{'s' if optimizer_states != 1 else ''}"
    if zero_stage is None:
        for flag, value in (("offload_optimizer", offload_optimizer), ("offload_params", offload_params)):
            if value:
                notes.append(f"launch.deepspeed.{flag}: needs DeepSpeed; ignored without it")
        w = DTYPE_BYTES[weights_dtype]
        a = 4 if lora else w  # bytes per trainable parameter
        states = {"weights": psi * w + (trainable * a if lora else 0), "gradients": trainable * a,
                  "optimizer_states": trainable * a * optimizer_states}
        where = "every GPU (DDP)" if n > 1 else "one process"
        details = {"weights": f"{psi:,} × {w} B ({weights_dtype}) on {where}"
                              + (f" + {trainable:,} LoRA params × 4 B (fp32)" if lora else ""),
                   "gradients": f"{trainable:,} {'LoRA ' if lora else ''}params × {a} B",
                   "optimizer_states": f"{trainable:,} {'LoRA ' if lora else ''}params × {states_txt} × {a} B "
                                       "(torch keeps them in the parameters' dtype)"}
        return states, details

    p = 2 if _half(precision) else DTYPE_BYTES[weights_dtype]
    if zero_stage == 0 and not _half(precision):
        k = optimizer_states * p  # the torch optimizer on the parameters as they are
        k_txt = f"{states_txt} × {p} B"
    else:
        master = 0 if (zero_stage == 3 and p == 4) else 4
        k = master + 4 * optimizer_states
        k_txt = f"K = {k} B ({'fp32 master copy + ' if master else ''}{states_txt} × 4 B)"
    weights, gradients, optimizer = (psi + (trainable if lora else 0)) * p, trainable * p, trainable * k
    split = {"weights": "", "gradients": "", "optimizer_states": ""}
    if zero_stage >= 1:
        optimizer, split["optimizer_states"] = _ceil_div(optimizer, n), f" / {n} GPUs"
    if zero_stage >= 2:
        gradients, split["gradients"] = _ceil_div(gradients, n), f" / {n} GPUs"
    if zero_stage == 3:
        weights, split["weights"] = _ceil_div(weights, n), f" / {n} GPUs"
    if offload_optimizer:
        if zero_stage == 0:
            notes.append("launch.deepspeed.offload_optimizer: needs ZeRO stage 1-3; ignored with stage 0")
        else:
            optimizer, split["optimizer_states"] = 0, " (offloaded to CPU)"
            if zero_stage >= 2:
                gradients, split["gradients"] = 0, " (partitions offloaded to CPU)"
    if offload_params:
        if zero_stage != 3:
            notes.append(f"launch.deepspeed.offload_params: needs ZeRO stage 3; ignored with stage {zero_stage}")
        else:
            weights, split["weights"] = 0, " (offloaded to CPU)"
    what = f"{psi:,} params" + (f" + {trainable:,} LoRA params" if lora else "")
    learned = f"{trainable:,} {'LoRA ' if lora else ''}params"
    details = {"weights": f"{what} × {p} B{split['weights']} (ZeRO-{zero_stage})",
               "gradients": f"{learned} × {p} B{split['gradients']}",
               "optimizer_states": f"{learned} × {k_txt}{split['optimizer_states']}"}
    return {"weights": weights, "gradients": gradients, "optimizer_states": optimizer}, details


def _buffers(shape: ModelShape, n: int, precision: str, weights_dtype: str, zero_stage: Optional[int],
             checkpointing: bool, lora_params: Optional[int]) -> tuple[int, str]:
    """Working copies beyond the model states.

    - DDP over several GPUs: its gradient buckets are a second copy of the trainable gradients
      (accelerate leaves gradient_as_bucket_view off).
    - Autocast with fp32 weights: the 16-bit copy of every matmul weight made in the forward is kept
      for the backward (all of them at the end of the forward). With LoRA and gradient checkpointing,
      frozen weights' copies live one layer at a time.
    - ZeRO-2/3: two reduce buckets of hidden² elements (accelerate's "auto" reduce_bucket_size).
    - ZeRO-3: the parameters gathered for the module being computed (at most the embedding matrix)
      plus the next layer, prefetched.
    """
    parts, total = [], 0
    h, vocab_matrix = shape.hidden_size, shape.vocab_size * shape.hidden_size
    lora = lora_params is not None
    if zero_stage is None:
        w = DTYPE_BYTES[weights_dtype]
        if n > 1:
            buckets = (lora_params * 4) if lora else shape.num_parameters * w
            total += buckets
            parts.append(f"DDP gradient buckets {buckets / GIB:.2f} GiB")
        if _half(precision) and w == 4:
            layers = 1 if (lora and checkpointing) else shape.num_layers
            copies = 2 * (layers * shape.layer_matmul_parameters() + vocab_matrix)
            total += copies
            parts.append(f"autocast 16-bit weight copies {copies / GIB:.2f} GiB")
    else:
        p = 2 if _half(precision) else DTYPE_BYTES[weights_dtype]
        if zero_stage >= 2:
            buckets = 2 * h * h * p
            total += buckets
            parts.append(f"ZeRO reduce buckets 2 × hidden² × {p} B")
        if zero_stage == 3:
            layer = shape.layer_parameters()
            gathered = p * (max(vocab_matrix, layer) + layer)
            total += gathered
            parts.append(f"ZeRO-3 gathered params {gathered / GIB:.2f} GiB")
    return total, "; ".join(parts) or "none"


def _activations(shape: ModelShape, micro_batch: int, seq_len: int, precision: str, weights_dtype: str,
                 zero_stage: Optional[int], checkpointing: bool, attn: str,
                 lora: Optional[LoraSpec]) -> tuple[int, str]:
    """Activations kept for the backward, for micro_batch × seq_len tokens.

    A packed (bfd) micro-batch row is exactly seq_len tokens, and an unpacked one at most seq_len, so
    micro_batch × seq_len is exact for packing and the worst case without it. Per token: each layer's
    `layer_activation_bytes` (+ the LoRA branches) and the final norm before the lm_head. With
    gradient checkpointing (transformers checkpoints every decoder layer) only each layer's input
    (r·h per token) stays, plus one layer's full activations recomputed during its backward.
    """
    e = _act_bytes(precision, weights_dtype)
    # the residual stream: 16-bit when DeepSpeed casts the model, else the weights' dtype (autocast
    # adds 16-bit matmul outputs to fp32 residuals in fp32)
    r = 2 if (zero_stage is not None and _half(precision)) else DTYPE_BYTES[weights_dtype]
    h, tokens = shape.hidden_size, micro_batch * seq_len
    per_layer = layer_activation_bytes(shape, e, r, attn)
    lora_layer, lora_head = lora.activation_bytes(shape, e) if lora is not None else (0, 0)
    per_layer += lora_layer
    head = final_norm_bytes(shape, e, r) + lora_head  # the final RMSNorm; its output is the lm_head input
    scores = micro_batch * shape.num_heads * seq_len**2 * eager_score_bytes(shape, e) if attn == "eager" else 0
    if checkpointing:
        total = tokens * (shape.num_layers * r * h + per_layer + head) + scores
        how = (f"{tokens:,} tokens × ({shape.num_layers} layer inputs × {r * h:,} B + one layer's "
               f"{per_layer:,} B + {head:,} B head)")
    else:
        total = tokens * (shape.num_layers * per_layer + head) + shape.num_layers * scores
        how = f"{tokens:,} tokens × ({shape.num_layers} layers × {per_layer:,} B + {head:,} B head)"
    if scores:
        layers = 1 if checkpointing else shape.num_layers
        how += f" + eager attention scores {layers} × {scores / GIB:.2f} GiB"
    return total, how


def _logits(shape: ModelShape, micro_batch: int, seq_len: int, e: int) -> tuple[int, str]:
    """The logits and the loss over the vocabulary, for every token of the micro-batch.

    engine.token_loss computes cross_entropy(logits.float()): the model's logits (e bytes per vocab
    entry; Gemma2's final soft-capping keeps its tanh output too, another e), the fp32 upcast whose
    log-softmax cross_entropy keeps (4 bytes), and in the backward the fp32 gradient of those (4
    bytes). With a 256k vocabulary this is the largest activation of a small model.
    """
    per_entry = e + (e if shape.logit_softcapping else 0) + 4 + 4
    tokens = micro_batch * seq_len
    total = tokens * shape.vocab_size * per_entry
    softcap = f" + {e} (soft-capping)" if shape.logit_softcapping else ""
    return total, (f"{tokens:,} tokens × {shape.vocab_size:,} vocab × ({e} logits{softcap} + 4 fp32 upcast "
                   "+ 4 its gradient) B")


# --- from a recipe -------------------------------------------------------------------------------

def optimizer_states_of(component: Any) -> int:
    """Full-size state tensors per trainable parameter of the recipe's optimizer plugin."""
    name = getattr(component, "name", "adamw")
    options = getattr(component, "options", {}) or {}
    if name == "sgd":
        return 1 if options.get("momentum", 0.0) else 0
    if name == "adafactor":  # factored second moment (rows + columns): negligible; beta1 adds a momentum
        return 1 if options.get("beta1") else 0
    return 2  # adamw, and Adam-like optimizers from plugins


def plan_from_recipe(recipe: Any, shape: Optional[ModelShape] = None, seq_len: Optional[int] = None,
                     num_gpus: Optional[int] = None, *, micro_batch: Optional[int] = None,
                     cache_dir: Optional[str | Path] = None, **overrides: Any) -> MemoryPlan:
    """The plan of a recipe (a Recipe, or a LoadedRecipe) on one of its GPUs.

    Everything comes from the recipe: the shape (`load_shape`, unless given), data.max_seq_length,
    train.per_device_batch_size, launch.num_processes, launch.mixed_precision, model.dtype,
    launch.deepspeed (stage and offloading; from its config_file when that is set and readable),
    model.gradient_checkpointing, model.attn_implementation, the lora section and the optimizer.
    `seq_len`, `num_gpus`, `micro_batch` and any plan_memory keyword (`overrides`) replace them.
    """
    recipe = getattr(recipe, "recipe", recipe)
    notes = []
    if shape is None:
        shape = load_shape(recipe.model, cache_dir=cache_dir)
    launch, ds = recipe.launch, recipe.launch.deepspeed
    zero_stage, offload_optimizer, offload_params = None, False, False
    if ds is not None:
        zero_stage, offload_optimizer, offload_params = ds.zero_stage, ds.offload_optimizer, ds.offload_params
        if ds.config_file:
            zero_stage, offload_optimizer, offload_params = _from_ds_file(ds.config_file, zero_stage,
                                                                          offload_optimizer, offload_params, notes)
    if launch.device == "cpu":
        notes.append("launch.device=cpu: the plan describes one process's memory as if it were on a GPU")
    lora = LoraSpec.from_recipe(recipe.lora) if recipe.lora is not None else None
    options = {"micro_batch": micro_batch or recipe.train.per_device_batch_size,
               "seq_len": seq_len or recipe.data.max_seq_length,
               "num_gpus": num_gpus or launch.num_processes, "precision": launch.mixed_precision,
               "weights_dtype": recipe.model.dtype, "zero_stage": zero_stage,
               "offload_optimizer": offload_optimizer, "offload_params": offload_params,
               "gradient_checkpointing": recipe.model.gradient_checkpointing,
               "attn_implementation": recipe.model.attn_implementation, "lora": lora,
               "optimizer_states": optimizer_states_of(recipe.optimizer), **overrides}
    plan = plan_memory(shape, **options)
    plan.notes[:0] = notes
    plan.settings["packing"] = getattr(recipe.data.packing, "name", str(recipe.data.packing))
    plan.settings["shape_source"] = shape.source
    return plan


def _from_ds_file(path: str, stage: int, offload_optimizer: bool, offload_params: bool,
                  notes: list[str]) -> tuple[int, bool, bool]:
    try:
        zero = json.loads(Path(path).read_text()).get("zero_optimization", {})
    except (OSError, ValueError, AttributeError):
        notes.append(f"launch.deepspeed.config_file: cannot read {path}; planned with launch.deepspeed's "
                     "zero_stage and offload settings")
        return stage, offload_optimizer, offload_params

    def offloaded(key: str) -> bool:
        device = (zero.get(key) or {}).get("device", "none")
        return device in ("cpu", "nvme")

    file_stage = zero.get("stage", stage)
    return (file_stage if file_stage in (0, 1, 2, 3) else stage, offloaded("offload_optimizer"),
            offloaded("offload_param"))


def max_seq_len(plan_for: Callable[[int], MemoryPlan], gpu_gib: float, *, multiple_of: int = 64,
                limit: int = 1 << 20) -> int:
    """The largest sequence length, a multiple of `multiple_of` up to `limit`, whose plan fits
    `gpu_gib`; 0 if none does. Memory grows with the sequence length, so a bisection finds it.

        max_seq_len(lambda s: plan_from_recipe(recipe, shape, seq_len=s), 80)
    """
    lo, hi = 0, limit // multiple_of  # in units of multiple_of: lo fits (0 trivially), hi+1 does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if plan_for(mid * multiple_of).fits(gpu_gib):
            lo = mid
        else:
            hi = mid - 1
    return lo * multiple_of


__all__ = ["ALL_LINEAR", "BUNDLED_CONFIGS", "GIB", "LoraSpec", "MemoryPlan", "ModelShape", "bundled_models",
           "eager_score_bytes", "final_norm_bytes", "layer_activation_bytes", "load_shape", "max_seq_len",
           "optimizer_states_of", "plan_from_recipe", "plan_memory"]
