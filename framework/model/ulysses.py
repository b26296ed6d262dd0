"""Ulysses sequence parallelism: the processes of a group each hold 1/N of a row's tokens, and attention
sees the whole row.

Every layer's projections, norms and MLP work on the rank's own tokens; around the attention kernel one
all-to-all turns (all heads, 1/N of the tokens) into (1/N of the heads, all tokens), the kernel runs
unchanged on whole rows, and a second all-to-all turns its output back (Jacobs et al., 2023, "DeepSpeed
Ulysses"). The wrapper is registered in transformers' attention interface, so sdpa, eager,
flex_attention and flash_attention_2 all run through it, each with the mask of the whole row: built here
from the whole row's position ids (documents restart at 0), as transformers builds it for an unsplit row.
"""
from __future__ import annotations

from functools import cache
from typing import Any, Callable, Optional

KERNELS = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")
MIN_TOKENS_PER_RANK = 16  # below this, a split costs two all-to-alls a layer and saves nothing


def head_problem(heads: int, kv_heads: int, n: int) -> str | None:
    """Why a model with `heads` query and `kv_heads` key/value heads cannot be split n ways, or None.
    Query heads are dealt out n ways; key/value heads too, or replicated up to n when there are fewer."""
    if heads % n:
        return f"the model's {heads} attention heads cannot be dealt out to {n} processes: use a divisor of {heads}"
    if kv_heads % n and n % kv_heads:
        return (f"the model's {kv_heads} key/value heads can be neither dealt out to {n} processes nor replicated "
                f"up to {n}: use a divisor or a multiple of {kv_heads} that divides {heads}")
    return None


def kernel_problem(attention: str, n: int) -> str | None:
    """Why model.attn_implementation cannot run split n ways, or None."""
    if n > 1 and attention not in KERNELS and attention != "auto":
        return (f"model.attn_implementation {attention} cannot run under sequence parallelism: use one of "
                f"{', '.join(KERNELS)} (or auto)")
    return None


def length_problem(max_seq_length: int, n: int) -> str | None:
    """Why rows of max_seq_length are not worth splitting n ways, or None."""
    if n > 1 and max_seq_length < MIN_TOKENS_PER_RANK * n:
        return (f"data.max_seq_length {max_seq_length:,} split {n} ways leaves {max_seq_length // n:,} tokens per "
                f"process (fewer than {MIN_TOKENS_PER_RANK}): sequence parallelism is for rows too long for one "
                "GPU (seqtune plan); lower launch.sequence_parallel")
    return None


NAME = "seqtune_ulysses"  # the attention implementation a split model's config names


class Shards:
    """One micro-batch split over a group: the group, the kernel the wrapper runs, and the whole rows'
    layout (on the device), which the masks are built from. A plain class on purpose: DDP and DeepSpeed
    rebuild dataclasses found in a forward's arguments, and this one is passed to every layer."""

    def __init__(self, group: Any, size: int, kernel: str, positions: Any, cu_seq_lens: Any, max_length: int,
                 one_document_per_row: bool):
        self.group, self.size, self.kernel = group, size, kernel
        self.positions = positions  # (rows, padded length): the whole rows' position ids, restarting per document
        self.cu_seq_lens, self.max_length = cu_seq_lens, max_length  # every document of the rows end to end
        self.one_document_per_row = one_document_per_row
        self._masks: dict[tuple, Any] = {}  # built once a forward (and reused by a checkpointed recompute)

    def mask(self, kind: str, window: Optional[int], dtype: Any) -> Any:
        """The whole rows' mask for the kernel: a token attends to the earlier tokens of its own
        document (and within `window` of itself); None where sdpa's causal flag says the same."""
        key = (kind, window, dtype)
        if key not in self._masks:
            self._masks[key] = _whole_row_mask(self, kind, window, dtype)
        return self._masks[key]


def _whole_row_mask(shards: Shards, kind: str, window: Optional[int], dtype: Any) -> Any:
    import torch

    if kind == "sdpa" and window is None and shards.one_document_per_row:
        return None
    positions = shards.positions
    document = (positions == 0).cumsum(1)
    if kind == "flex_attention":
        return _block_mask(document, window)
    at = torch.arange(positions.size(1), device=positions.device)
    allowed = (document[:, :, None] == document[:, None, :]) & (at[:, None] >= at[None, :])
    if window is not None:
        allowed &= (at[:, None] - at[None, :]) < window
    allowed = allowed[:, None]  # (rows, 1, queries, keys): the same for every head
    if kind == "eager":  # eager adds its mask to the scores
        return torch.zeros((), dtype=dtype, device=positions.device).masked_fill(~allowed, torch.finfo(dtype).min)
    return allowed


def _block_mask(document: Any, window: Optional[int]) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    def allowed(b, h, q, k):
        keep = (document[b, q] == document[b, k]) & (q >= k)
        return keep & (q - k < window) if window is not None else keep

    rows, length = document.shape
    # compiled, the mask is made block by block; uncompiled, torch first materialises every
    # rows x length x length entry. The CPU (tests) takes the uncompiled path.
    build = _compiled(create_block_mask) if document.device.type == "cuda" else create_block_mask
    return build(allowed, rows, None, length, length, device=document.device)


@cache
def _compiled(function: Callable) -> Callable:
    import torch

    return torch.compile(function)


def sequence_sum(values: Any, batch: dict) -> Any:
    """`values` summed over the batch's sequence-parallel group, with gradients (each rank then holds the
    whole, e.g. a sequence's log-probability from every rank's tokens); unchanged without one."""
    shards = batch.get("sequence_parallel")
    if shards is None:
        return values
    return _collectives()[1].apply(values, shards.group)


def rank_share(batch: dict) -> float:
    """The share of a value every rank of the group computes alike (a pair's loss after sequence_sum)
    that each rank reports, so that the sum over ranks counts it once: 1/N, or 1 without a group."""
    shards = batch.get("sequence_parallel")
    return 1.0 if shards is None else 1.0 / shards.size


def split_attention(model: Any, n: int) -> None:
    """Route the model's attention through the wrapper (registered with transformers once); a model
    whose heads cannot be split n ways is refused."""
    from transformers import AttentionInterface

    from framework.errors import UserError

    config = getattr(model.config, "get_text_config", lambda: model.config)()
    heads = config.num_attention_heads
    problem = head_problem(heads, getattr(config, "num_key_value_heads", None) or heads, n)
    if problem:
        raise UserError(f"launch.sequence_parallel: {problem}")
    AttentionInterface.register(NAME, attention)
    model.set_attn_implementation(NAME)


def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> tuple[Any, None]:
    """transformers' attention function signature: (rows, heads, tokens/N, head dim) in, the kernel's
    (rows, tokens/N, heads, head dim) out. `attention_mask` is ignored: transformers builds none for this
    implementation, the whole rows' comes from the shards."""
    shards: Optional[Shards] = kwargs.pop("sequence_parallel", None)
    if shards is None:
        raise RuntimeError("a sequence-parallel model ran without its micro-batch's shards (batch['sequence_parallel'])")
    n, kv_heads = shards.size, key.size(1)
    if kv_heads % n:  # fewer key/value heads than processes: each is replicated for the ranks that share it
        key, value = key.repeat_interleave(n // kv_heads, dim=1), value.repeat_interleave(n // kv_heads, dim=1)
    query, key, value = (_swap(x, shards) for x in (query, key, value))  # (rows, heads/N, tokens, d)
    kernel, kind = _kernel(module, shards.kernel)
    grouped = _Grouped(module, query.size(1) // key.size(1), kind)
    kwargs.pop("position_ids", None)  # the rank's own: the kernel sees whole rows
    if kind.startswith("flash_attention"):
        out = _flash(kernel, grouped, query, key, value, shards, kwargs)
    else:
        mask = shards.mask(kind, kwargs.get("sliding_window"), query.dtype)
        out, _ = kernel(grouped, query, key, value, mask, **kwargs)
    return _swap(out, shards), None  # the kernel's (rows, tokens, heads/N, d) -> (rows, tokens/N, heads, d)


def _swap(x: Any, shards: Shards) -> Any:
    """(rows, A, B, d) -> (rows, A/N, N x B, d): rank j receives the j-th N-th of dimension 1 from every
    rank and stacks them along dimension 2 in rank order. Before the kernel A is the heads and B this
    rank's tokens; after it, A is the whole row's tokens and B this rank's heads: the same exchange."""
    rows, a, b, dim = x.shape
    n = shards.size
    send = x.reshape(rows, n, a // n, b, dim).transpose(0, 1).contiguous()
    received = _exchange(send, shards.group)  # (source rank, rows, A/N, B, d)
    return received.permute(1, 2, 0, 3, 4).reshape(rows, a // n, n * b, dim)


def _exchange(send: Any, group: Any) -> Any:
    """all-to-all along the first dimension, with autograd (its backward is the same exchange)."""
    return _collectives()[0].apply(send, group)


@cache
def _collectives() -> tuple[Any, Any]:
    """The autograd Functions (an all-to-all, a sum over the group), built on first use: importing this
    module imports no torch."""
    import torch
    import torch.distributed as dist

    class AllToAll(torch.autograd.Function):
        @staticmethod
        def forward(ctx, send, group):
            ctx.group = group
            # a fresh contiguous output: one made `like` a permuted view keeps its strides and scrambles
            received = torch.empty(send.shape, dtype=send.dtype, device=send.device)
            dist.all_to_all_single(received, send.contiguous(), group=group)
            return received

        @staticmethod
        def backward(ctx, grad):
            return AllToAll.apply(grad.contiguous(), ctx.group), None

    class GroupSum(torch.autograd.Function):
        @staticmethod
        def forward(ctx, values, group):
            ctx.group = group
            total = values.clone()
            dist.all_reduce(total, group=group)
            return total

        @staticmethod
        def backward(ctx, grad):  # every rank's total depends on every rank's values
            return GroupSum.apply(grad.contiguous(), ctx.group), None

    return AllToAll, GroupSum


class _Grouped:
    """The attention module as the kernel sees it: the query heads per key/value head of this rank's share
    (replicated key/value heads change it), and a config naming the kernel itself (flash-attention's
    wrapper picks its functions by that name); everything else is the module's."""

    def __init__(self, module: Any, groups: int, kernel: str):
        self._module, self.num_key_value_groups = module, groups
        self.config = _Named(module.config, kernel)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


class _Named:
    """A config whose attention implementation is the kernel's own name, not the wrapper's."""

    def __init__(self, config: Any, kernel: str):
        self._config, self._attn_implementation = config, kernel

    def __getattr__(self, name: str) -> Any:
        return getattr(self._config, name)


def _kernel(module: Any, name: str) -> tuple[Callable, str]:
    """The kernel function for `name`: transformers' registered one, or the model's own eager function."""
    import sys

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if name == "eager":
        return sys.modules[type(module).__module__].eager_attention_forward, name
    return ALL_ATTENTION_FUNCTIONS[name], name


def _flash(kernel: Callable, module: Any, query: Any, key: Any, value: Any, shards: Shards, kwargs: dict) -> Any:
    """flash-attention's variable-length kernel over every document of the rows, end to end as one row."""
    rows, heads, tokens, dim = query.shape

    def flat(x: Any) -> Any:
        return x.transpose(0, 1).reshape(1, x.size(1), rows * tokens, dim)

    boundaries = {"cu_seq_lens_q": shards.cu_seq_lens, "cu_seq_lens_k": shards.cu_seq_lens,
                  "max_length_q": shards.max_length, "max_length_k": shards.max_length}
    out, _ = kernel(module, flat(query), flat(key), flat(value), None, **{**kwargs, **boundaries})
    return out.reshape(rows, tokens, heads, dim)
