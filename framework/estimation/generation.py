"""The generation phase of an objective that samples its own completions (online RL: GRPO).

Before each optimizer step the model generates `num_generations` completions for each of the
micro-batch's prompts, with no gradient: micro_batch rows (prompts × G; `generation_batch` of them at
a time when the generator is given a batch_size), each up to max_seq_length tokens (a prompt of at
most max_seq_length - max_new_tokens, then max_new_tokens generated). Beside the model states and
the buffers (their autocast weight copies are made in generation too: autocast caches the casts of
trainable weights whatever the grad mode) there are then no activations kept for a backward, no loss
buffers, and no gradients without DeepSpeed (the engine frees them at zero_grad(set_to_none=True));
instead, with transformers' generate:

- the KV cache: K and V of every layer for every token of every row (a DynamicCache);
- at the prompts' prefill, one layer's working tensors for every prompt token (no grad: freed as the
  layer goes), with the prompt's part of the cache;
- at each later step, one position's logits per row and the sampling's copies of them.

The phase peaks at the cache's full length plus the larger of the last two. Counted per element as
measured by tracking the storages of every op's output on CPU (transformers 5, a small Llama): within
1% of the measured peak for prefill-bound and sampling-bound runs in bf16 and fp32, within 3% under
autocast with fp32 weights, over by 6% for an eager prefill. Not counted: the one layer's cache that
`torch.cat` copies as the cache grows and the previous step's scores still referenced during the next
forward (small beside the cache; the overhead's share of the rest stands for them and for the
fragmentation of a cache that grows a token at a time), and Gemma 2's sliding-window layers keeping
fewer tokens (the safe side).

`generation` returns what the phase needs beyond the training step's own transient parts, which the
estimate adds as a part, so its total is the larger phase's peak. The scoring passes before the update
(the old policy's and the reference's log-probabilities over the same rows, no grad, chunked by the
objective's memory_mib) hold one layer's tensors and one chunk of logits at a time: less than the
training forward over the same rows, which the training phase counts.
"""
from __future__ import annotations

from framework.estimation.activations import attention_kv_dim, eager_score_bytes
from framework.estimation.settings import GIB, MemorySettings
from framework.estimation.shapes import ModelShape

# Models whose rotary embedding casts K back to its projection's dtype (OLMo 2/3); the others multiply
# K by cos/sin in the residual stream's dtype, so under autocast with fp32 weights their cache holds
# K in fp32 beside 16-bit V (measured with transformers' generate under CPU autocast).
ROPE_KEEPS_DTYPE = {"olmo2", "olmo3"}
# Per vocabulary entry of a row, beside its logits: fp32 copies (the upcast, the warped scores, top-p's
# sorted values, their cumulative sum and masked copies, the probabilities), top-p's int64 sort
# indices and two boolean masks, as measured for temperature + top-p sampling.
SAMPLING_BYTES = 7 * 4 + 8 + 2
PREFILL_HIDDEN_COPIES = 4  # the embeddings, the layer's input, the residual after attention, the normed input


def residual_bytes(s: MemorySettings) -> int:
    """The residual stream's dtype: 16-bit when DeepSpeed casts the model, else the weights' own."""
    return 2 if (s.zero_stage is not None and s.half) else s.weight_bytes


def cache_entry_bytes(shape: ModelShape, s: MemorySettings) -> tuple[int, int]:
    """Bytes of one cached K element and one V element: V as its projection computes it (the compute
    dtype), K after the rotary embedding (the residual stream's dtype, except where RoPE casts back)."""
    key = s.act_bytes if shape.model_type in ROPE_KEEPS_DTYPE else residual_bytes(s)
    return key, s.act_bytes


def kv_cache(shape: ModelShape, s: MemorySettings) -> tuple[int, str]:
    """K and V of every layer for the rows sampled at once, of max_seq_length tokens (whole rows:
    generation is not split over a sequence-parallel group)."""
    key, value = cache_entry_bytes(shape, s)
    per_token = shape.num_layers * shape.num_kv_heads * shape.head_dim * (key + value)
    total = sampled_rows(s) * s.max_seq_length * per_token
    why = ("the weights' dtype" if not s.half else "the 16-bit compute dtype, as in training" if key == value
           else "V in the 16-bit compute dtype, K in fp32: RoPE multiplies it by fp32 cos/sin")
    return total, (f"KV cache {total / GIB:.2f} GiB: {_rows_text(s)} × {s.max_seq_length:,} tokens × "
                   f"{shape.num_layers} layers × {shape.num_kv_heads} KV heads × {shape.head_dim} × "
                   f"({key} B K + {value} B V: {why})")


def prefill(shape: ModelShape, s: MemorySettings) -> tuple[int, str]:
    """One layer's working tensors for every prompt token: hidden-size copies, and the MLP's three
    intermediate tensors or the attention's Q, K, V and output (with eager attention, its scores, their
    fp32 upcast and softmax), whichever is larger."""
    e, prompt = s.act_bytes, max(s.max_seq_length - s.max_new_tokens, 0)
    rows = sampled_rows(s)
    tokens = rows * prompt
    r = residual_bytes(s)
    copies = PREFILL_HIDDEN_COPIES * r + (e if e != r else 0)  # autocast: the normed input's 16-bit copy
    hidden = tokens * copies * shape.hidden_size
    mlp = tokens * 3 * e * shape.intermediate_size
    attention = tokens * e * 2 * (shape.q_dim + attention_kv_dim(shape, s.attn_implementation))
    if s.attn_implementation == "eager":
        attention += rows * shape.num_heads * prompt**2 * (eager_score_bytes(shape, e) + 4)
    total = hidden + max(mlp, attention)
    return total, f"prefill {total / GIB:.2f} GiB (one layer, {tokens:,} prompt tokens)"


def sampling(shape: ModelShape, s: MemorySettings) -> tuple[int, str]:
    """One position's logits per row and the sampling's copies of them."""
    rows, per_entry = sampled_rows(s), s.act_bytes + SAMPLING_BYTES
    total = rows * shape.vocab_size * per_entry
    return total, f"sampling {total / GIB:.2f} GiB ({rows} rows × {shape.vocab_size:,} vocab × {per_entry} B)"


def generation(shape: ModelShape, s: MemorySettings, parts: dict[str, int]) -> tuple[int, str]:
    """What the generation phase needs beyond the training step's transient parts (`parts`: the
    estimate's bytes by part), and how: 0 when the training step needs more."""
    (cache, cache_how), (first, first_how), (step, step_how) = kv_cache(shape, s), prefill(shape, s), sampling(shape, s)
    phase = cache + max(first, step)
    # gradients are freed between steps without DeepSpeed; a ZeRO engine may keep its gradient
    # partitions in flat buffers, so there they count in both phases (the safe side)
    transient = [name for name in ("gradients", "activations", "logits", "all_to_all")
                 if parts[name] and (name != "gradients" or s.zero_stage is None)]
    training = sum(parts[name] for name in transient)
    beyond = max(phase - training, 0)
    named = " + ".join(name.replace("_", "-") for name in transient) or "nothing"
    verdict = "more: the difference is added" if beyond else "less: nothing added"
    return beyond, (f"{cache_how} + the larger of {first_how} and {step_how} = {phase / GIB:.2f} GiB between "
                    f"steps, vs the training step's {named}: {training / GIB:.2f} GiB; {verdict}")


def sampled_rows(s: MemorySettings) -> int:
    """The sequences generated at once: the micro-batch's rows, or the generator's batch of them."""
    return min(s.micro_batch, s.generation_batch or s.micro_batch)


def _rows_text(s: MemorySettings) -> str:
    if sampled_rows(s) < s.micro_batch:
        return f"{sampled_rows(s)} rows (the generator's batch_size)"
    if s.num_generations == 1:
        return f"{s.micro_batch} rows"
    return f"{s.micro_batch} rows ({s.micro_batch // s.num_generations} prompts × {s.num_generations})"
