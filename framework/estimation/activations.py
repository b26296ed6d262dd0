"""Activations a training step keeps for its backward, and the logits and loss over the vocabulary.

The per-layer accounting follows Korthikanti et al., 2022 ("Reducing Activation Recomputation in Large
Transformer Models", section 4.1: every tensor a layer keeps for its backward), applied to Hugging
Face's Llama/Qwen2/Gemma2/OLMo2 decoder layers: RMSNorm instead of LayerNorm, a gated MLP, grouped-query
attention, no dropout, and fused attention kernels. See `layer_activation_bytes` for the formula.
"""
from __future__ import annotations

from framework.estimation.sequence_parallel import dense_mask
from framework.estimation.settings import GIB, MemorySettings
from framework.estimation.shapes import ModelShape


def layer_activation_bytes(shape: ModelShape, act_bytes: int, residual_bytes: int, attn: str,
                           sequence_parallel: int = 1) -> int:
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
      repeats K/V for every head when there is a padding mask or the kernel is eager; flex_attention
      takes them grouped, as flash does); + 4·a for the fp32 log-sum-exp of fused kernels. No
      dropout (attention_dropout is 0), so no masks.
    - Gated MLP: 4·e·I (gate output, up output, act(gate), and act(gate)·up, the down_proj input).

    Eager attention also keeps a·s²·(4 + e) bytes per sequence: the fp32 softmax and its 16-bit copy
    (only fp32 when e = 4), and another a·s²·e with Gemma2's attention soft-capping; see
    `eager_score_bytes`. Flash attention and sdpa's fused kernels keep no s² tensor.

    Under sequence parallelism (N processes per row) the kernel holds whole rows for H/N heads: per
    token of the process's own 1/N of the row, the same bytes as here, except that flash and flex
    keep K/V for max(kv_heads, N) heads (key/value heads are replicated up to N).

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
    kv_kept = attention_kv_dim(shape, attn, sequence_parallel)
    attention = e * (q + 2 * kv_kept + q) + (4 * shape.num_heads if attn != "eager" else 0)
    mlp = 4 * e * inter
    return norms + attention + mlp


def attention_kv_dim(shape: ModelShape, attn: str, sequence_parallel: int = 1) -> int:
    """The width of K (and of V) as the attention kernel takes them: repeated for every query head by
    sdpa (with a padding mask) and eager, grouped for flash and flex (replicated up to N heads under
    sequence parallelism)."""
    if attn.startswith("flash_attention") or attn == "flex_attention":
        return max(shape.num_kv_heads, sequence_parallel) * shape.head_dim
    return shape.q_dim


def final_norm_bytes(shape: ModelShape, act_bytes: int, residual_bytes: int) -> int:
    """Bytes per token the final RMSNorm keeps (a pre-norm of the lm_head; see layer_activation_bytes)."""
    n = 4 if shape.norm_in_fp32 else residual_bytes
    return (4 + n + act_bytes) * shape.hidden_size


def eager_score_bytes(shape: ModelShape, act_bytes: int) -> int:
    """Bytes per head per (query, key) pair that eager attention keeps: the fp32 softmax (transformers
    computes it in fp32), its copy in the activation dtype, and the tanh of Gemma2's soft-capping."""
    return 4 + (act_bytes if act_bytes != 4 else 0) + (act_bytes if shape.attn_softcapping else 0)


def activations(shape: ModelShape, s: MemorySettings) -> tuple[int, str]:
    """Activations kept for the backward, for micro_batch × max_seq_length tokens (× 1/N of each
    row's tokens under sequence parallelism, and the whole rows' mask, see sequence_parallel.py).

    A packed micro-batch row is exactly max_seq_length tokens, and an unpacked one at most that, so
    micro_batch × max_seq_length is exact for packing and the worst case without it. Per token: each
    layer's `layer_activation_bytes` (+ the LoRA branches) and the final norm before the lm_head. With
    gradient checkpointing (transformers checkpoints every decoder layer) only each layer's input
    (r·h per token) stays, plus one layer's full activations recomputed during its backward. With
    activation offloading what is saved (with checkpointing: the layer inputs) moves to host memory
    as the forward goes, so one layer's activations are on the GPU at a time.
    """
    e = s.act_bytes
    # the residual stream: 16-bit when DeepSpeed casts the model, else the weights' dtype (autocast
    # adds 16-bit matmul outputs to fp32 residuals in fp32)
    r = 2 if (s.zero_stage is not None and s.half) else s.weight_bytes
    h, tokens = shape.hidden_size, s.micro_batch * s.tokens_per_row
    lora_layer, lora_head = s.lora.activation_bytes(shape, e) if s.lora is not None else (0, 0)
    per_layer = layer_activation_bytes(shape, e, r, s.attn_implementation, s.sequence_parallel) + lora_layer
    head = final_norm_bytes(shape, e, r) + lora_head  # the final RMSNorm; its output is the lm_head input
    scores = eager_scores(shape, s)
    if s.activation_offloading:  # what is saved waits in host memory: one layer's worth is in flight
        total = tokens * (per_layer + head) + scores
        kept = shape.num_layers * (r * h if s.gradient_checkpointing else per_layer)
        how = (f"{tokens_text(s)} × (one layer's {per_layer:,} B + {head:,} B head); {tokens * kept / GIB:.2f} GiB "
               "offloaded to pinned host memory per process")
    elif s.gradient_checkpointing:
        total = tokens * (shape.num_layers * r * h + per_layer + head) + scores
        how = (f"{tokens_text(s)} × ({shape.num_layers} layer inputs × {r * h:,} B + one layer's "
               f"{per_layer:,} B + {head:,} B head)")
    else:
        total = tokens * (shape.num_layers * per_layer + head) + shape.num_layers * scores
        how = f"{tokens_text(s)} × ({shape.num_layers} layers × {per_layer:,} B + {head:,} B head)"
    if scores:
        layers = 1 if (s.gradient_checkpointing or s.activation_offloading) else shape.num_layers
        how += f" + eager attention scores {layers} × {scores / GIB:.2f} GiB"
    mask, mask_how = dense_mask(shape, s)
    return total + mask, how + mask_how


def tokens_text(s: MemorySettings) -> str:
    """The tokens one GPU holds, as the estimate's details say it."""
    tokens = s.micro_batch * s.tokens_per_row
    if s.sequence_parallel == 1:
        return f"{tokens:,} tokens"
    return f"{tokens:,} tokens per GPU ({s.micro_batch} × {s.tokens_per_row:,}: 1/{s.sequence_parallel} of each row)"


def eager_scores(shape: ModelShape, s: MemorySettings) -> int:
    """The s² scores one eager layer keeps: per row, its heads × its length², for whole (padded) rows
    and 1/N of the heads under sequence parallelism."""
    if s.attn_implementation != "eager":
        return 0
    heads = -(-shape.num_heads // s.sequence_parallel)
    return s.micro_batch * heads * s.padded_length**2 * eager_score_bytes(shape, s.act_bytes)


def logits(shape: ModelShape, s: MemorySettings) -> tuple[int, str]:
    """The logits and the loss over the vocabulary.

    An unchunked loss computes cross_entropy(logits.float()) for every token of the micro-batch: the
    model's logits (e bytes per vocab entry; Gemma2's final soft-capping keeps its tanh output too,
    another e), the fp32 upcast whose log-softmax cross_entropy keeps (4 bytes), and in the backward
    the fp32 gradient of those (4 bytes). With a 256k vocabulary this is the largest activation of a
    small model. A chunked loss (`loss_chunk_tokens`) holds that for one chunk at a time, plus the
    trained positions' hidden states and their gradient (2·e·h per token) and, when it takes the
    gradients in the forward, the output layer's gradient until the backward (vocab × h), summed in fp32,
    beside the chunk's own gradient of the layer before it is added.
    """
    e, h, vocab = s.act_bytes, shape.hidden_size, shape.vocab_size
    per_entry = e + (e if shape.logit_softcapping else 0) + 4 + 4
    tokens = s.micro_batch * s.tokens_per_row  # under sequence parallelism: this process's share
    softcap = f" + {e} (soft-capping)" if shape.logit_softcapping else ""
    entry = f"{vocab:,} vocab × ({e} logits{softcap} + 4 fp32 upcast + 4 its gradient) B"
    if s.loss_chunk_tokens is None:
        return tokens * vocab * per_entry, f"{tokens_text(s)} × {entry}"
    chunk = min(tokens, s.loss_chunk_tokens)
    total = chunk * vocab * per_entry + tokens * 2 * e * h
    how = f"one chunk of {chunk:,} tokens × {entry} + {tokens_text(s)} × 2 × {e * h:,} B hidden states and gradient"
    if s.loss_holds_head_gradient and s.lora is None and s.lora_trainable_params is None:
        grad_bytes = 2 if (s.zero_stage is not None and s.half) else s.weight_bytes
        total += vocab * h * (4 + grad_bytes)
        how += (f" + the output layer's gradient {vocab:,} × {h:,} × (4 B summed in fp32 + {grad_bytes} B of the "
                "chunk being added), taken in the forward")
    return total, how
