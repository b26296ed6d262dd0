"""Sequence parallelism (`launch.sequence_parallel`, DeepSpeed-Ulysses style) as the planner sees it:
whether a recipe's model, kernel and length can be split N ways, and what the split adds on each GPU.

What is per token divides by N on its own: each process holds `MemorySettings.tokens_per_row` tokens
of every row (rows pad to a multiple of N), and its attention kernel works on whole rows for H/N heads,
the same bytes as 1/N of the tokens for all heads (activations.py). What does not divide is here: the
all-to-all copies around each kernel, and the dense masks sdpa and eager take, which every process
builds for the whole row. Model states do not change: partitioned by ZeRO (or replicated by DDP) over
every process, as without the split.

The rules themselves (`head_problem`, ...) are framework.model.ulysses's, the engine's own, which
imports no torch: this module stays pure Python.
"""
from __future__ import annotations

from typing import Any, Optional

from framework.errors import UserError
from framework.estimation.settings import GIB, MemorySettings
from framework.estimation.shapes import ModelShape, model_config
from framework.model.ulysses import head_problem, kernel_problem, length_problem

KEY = "launch.sequence_parallel"


def group_sizes(num_processes: int) -> list[int]:
    """The values of launch.sequence_parallel a run of `num_processes` processes can take."""
    return [n for n in range(1, num_processes + 1) if num_processes % n == 0]


def shape_problem(shape: ModelShape, attention: str, n: int) -> Optional[str]:
    """Why a model of `shape` with kernel `attention` cannot be split n ways, or None."""
    if n == 1:
        return None
    return head_problem(shape.num_heads, shape.num_kv_heads, n) or kernel_problem(attention, n)


def check_recipe(recipe: Any, problems: Any) -> None:
    """Add to `problems` (config.validate.Problems) why the recipe's rows cannot be split
    launch.sequence_parallel ways: its kernel, its max_seq_length, and its model's heads when the
    model's config can be read here without a download (else training checks the loaded model).
    Checks whose keys already have a problem are skipped."""
    if problems.touches(KEY) or recipe.launch.sequence_parallel == 1:
        return
    n = recipe.launch.sequence_parallel
    found = []
    if not problems.touches("model.attn_implementation"):
        found.append(kernel_problem(recipe.model.attn_implementation, n))
    if recipe.data is not None and not problems.touches("data.max_seq_length"):
        found.append(length_problem(recipe.data.max_seq_length, n))
    heads = None if problems.touches("model") else _heads(recipe.model)
    if heads is not None:
        found.append(head_problem(*heads, n))
    for message in filter(None, found):
        problems.add(KEY, message)


def _heads(recipe_model: Any) -> Optional[tuple[int, int]]:
    """(attention heads, key/value heads) from the model's config.json, or None when it is not
    readable here or does not say."""
    try:
        config, _ = model_config(recipe_model)
    except UserError:
        return None
    if "num_attention_heads" not in config and isinstance(config.get("text_config"), dict):
        config = {**config, **config["text_config"]}  # multimodal wrappers keep the decoder in text_config
    heads = config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads", heads)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (heads, kv_heads)):
        return None  # the schema and the model loader say what is wrong with it
    return heads, kv_heads


def kv_heads_split(shape: ModelShape, n: int) -> int:
    """Key/value heads over the whole group: replicated up to n when the model has fewer."""
    return max(shape.num_kv_heads, n)


def all_to_all(shape: ModelShape, s: MemorySettings) -> tuple[int, str]:
    """The all-to-all copies of one layer at a time: Q, K, V (K/V replicated up to N heads) and the
    attention output, each once as sent (the rank's tokens, all heads) and once as received (whole
    rows, 1/N of the heads); the backward sends their gradients the same way. The received copies
    are what the kernel then keeps, so this errs on the safe side by one copy."""
    if s.sequence_parallel == 1:
        return 0, "none"
    width = shape.q_dim + 2 * kv_heads_split(shape, s.sequence_parallel) * shape.head_dim + shape.q_dim
    tokens = s.micro_batch * s.tokens_per_row
    total = 2 * width * s.act_bytes * tokens
    return total, (f"one layer's Q, K, V and output, sent and received: 2 × {width:,} values × {s.act_bytes} B × "
                   f"{tokens:,} tokens per GPU")


def dense_mask(shape: ModelShape, s: MemorySettings) -> tuple[int, str]:
    """The dense masks sdpa and eager take under sequence parallelism: L × L per row (padding
    included), built once a forward on every process for the whole row and kept for the backward (a
    checkpointed recompute reuses them); one per attention window (Gemma 2 alternates two). sdpa's is
    boolean (1 byte an entry), eager's is added to the scores (the activations' dtype). sdpa needs
    none only when every row is one document of a multiple of N tokens, in a model without a sliding
    window; rows pad to a multiple of N with a document of their own, so this counts the worst case.

    Counted under sequence parallelism only: transformers builds such masks for an unsplit run too
    (sdpa for packed or padded rows, eager always), which this planner has not counted; its numbers
    at sequence_parallel 1 stay what they were."""
    if s.sequence_parallel == 1 or s.attn_implementation not in ("sdpa", "eager"):
        return 0, ""
    entry = 1 if s.attn_implementation == "sdpa" else s.act_bytes
    masks = shape.attention_masks
    total = masks * s.micro_batch * s.padded_length**2 * entry
    return total, (f" + the whole rows' dense {s.attn_implementation} mask{'s' if masks > 1 else ''} "
                   f"{masks} × {s.micro_batch} × {s.padded_length:,}² × {entry} B ({total / GIB:.2f} GiB)")
