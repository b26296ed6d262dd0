"""Which attention kernel a run uses: `model.attn_implementation`, with `auto` resolved.

Packed rows (best-fit decreasing) hold several documents that must not attend to each other.
transformers reads the position ids restarting at each document and masks accordingly, and how
fast that is depends on the kernel:

- flash_attention_2/3: the micro-batch becomes one padding-free row and the variable-length kernel
  attends within each document only (needs the flash-attn package and a CUDA GPU);
- flex_attention: a block mask built from the documents, whose empty blocks the kernel skips
  (PyTorch's own; on the CPU it has no backward, so it trains on GPUs only);
- sdpa and eager: a dense max_seq_length x max_seq_length mask. On a GPU, sdpa's flash kernel takes no
  mask, so its memory-efficient kernel runs and computes every block, the ones between documents too.

`auto` takes the fastest exact one this machine has: flash_attention_2 on a CUDA GPU with flash-attn,
else flex_attention on a CUDA GPU when rows hold several documents, else sdpa (on the CPU, and for
unpacked rows, whose padding mask sdpa handles well).
"""
from __future__ import annotations

import importlib.util
from typing import Any


def separates_documents(packing: Any) -> bool:
    """Whether a row holds several documents kept apart by attention (restarting positions): the
    layouts that can also go padding-free. Rows that cross documents on purpose (`wrapped`) do not."""
    return bool(getattr(packing, "packs_rows", False) and getattr(packing, "supports_padding_free", False))


def on_gpu(launch: Any) -> bool:
    """Whether the run's processes use CUDA GPUs (launch.device, with `auto` meaning: if there are any)."""
    import torch

    return launch.device == "cuda" or (launch.device == "auto" and torch.cuda.device_count() > 0)


def resolve(asked: str, documents_per_row: bool, gpu: bool) -> str:
    """The kernel for `model.attn_implementation` (see the module for the rule `auto` follows)."""
    if asked != "auto":
        return asked
    if gpu and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "flex_attention" if gpu and documents_per_row else "sdpa"


def dense_mask_warning(attention: str, documents_per_row: bool, gpu: bool) -> str | None:
    """A warning when packed rows will run on a GPU with a dense mask computing every block."""
    if not (gpu and documents_per_row and attention in ("sdpa", "eager")):
        return None
    return (f"model.attn_implementation={attention} with packed rows on a GPU attends over a dense "
            "max_seq_length² mask, blocks between documents included; model.attn_implementation=auto "
            "picks flex_attention (or flash_attention_2 where flash-attn is installed), which skips them")
