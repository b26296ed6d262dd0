"""Losses: the summed next-token cross-entropy of a micro-batch and its trainable-token count.

`cross_entropy` computes the full-vocabulary logits of every token, as transformers does.
`chunked_cross_entropy` (the default) gives the same loss and the same gradients without ever
holding them: it runs the decoder to its final hidden states, keeps the positions that are trained,
and applies the output layer, soft-capping, the fp32 upcast and the cross-entropy a chunk of tokens
at a time, sized so that one chunk's logits and their gradient fit `memory_mib`.

Its backward is either computed chunk by chunk during the forward (`in_forward`: the same three
matmuls as the unchunked loss, but the output layer's gradient is held from forward to backward,
summed over the chunks in fp32 as one matmul sums inside: in bf16, 64 chunks' roundings leave it 4x
further from the exact gradient), or recomputed chunk by chunk in the backward (`recompute`: nothing
held, one more matmul per chunk; autograd adds the chunks' gradients in the weights' dtype). `auto`
uses in_forward unless the output layer is partitioned by ZeRO-3, which only gathers it inside its
own forward and backward. Without gradients (evaluation) each chunk is the loss alone.
"""
from __future__ import annotations

from functools import cache
from typing import Annotated, Literal

from framework import (IGNORE_INDEX, MODEL_INPUTS, Bounds, chunk_ranges, chunk_tokens, decoder_output, hookimpl,
                       trained_states, upcast)


def cross_entropy():
    """The full-vocabulary logits of every token of the micro-batch, then the cross-entropy."""

    def loss(model, batch):
        import torch.nn.functional as F

        logits = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}, use_cache=False).logits
        if "shift_labels" in batch:  # shifted once on the whole row (a sequence-parallel rank's part)
            targets = batch["shift_labels"]
        else:
            logits, targets = logits[:, :-1], batch["labels"][:, 1:]
        total = F.cross_entropy(upcast(logits).reshape(-1, logits.size(-1)), targets.reshape(-1),
                                ignore_index=IGNORE_INDEX, reduction="sum")
        return total, (targets != IGNORE_INDEX).sum()

    return loss


def chunked_cross_entropy(*, memory_mib: Annotated[float, Bounds(gt=0)] = 512,
                          backward: Literal["auto", "in_forward", "recompute"] = "auto"):
    """The cross-entropy of the trained positions, a chunk of tokens at a time (see the module)."""

    def loss(model, batch):
        import torch

        out = decoder_output(model, batch)
        hidden, targets = trained_states(out, batch)
        # A rank's empty filler has one empty chunk: a zero that still reaches every parameter.
        chunks = chunk_ranges(out, len(targets), batch, memory_mib)
        if not torch.is_grad_enabled():  # evaluation: the loss alone, one matmul a chunk
            return sum(_chunk_loss(out, hidden[a:b], targets[a:b]) for a, b in chunks), len(targets)
        params = [p for p in out.head.parameters() if p.requires_grad]
        if backward == "recompute" or (backward == "auto" and any(hasattr(p, "ds_id") for p in params)):
            return _recomputed(out, hidden, targets, chunks), len(targets)
        return _head_loss().apply(hidden, targets, out, chunks, *params), len(targets)

    return loss


def holds_head_gradient(zero_stage, backward: str = "auto") -> bool:
    """Whether the output layer's gradient is taken in the forward and held until the backward."""
    return backward == "in_forward" or (backward == "auto" and zero_stage != 3)


# Declared for planning (see hookspecs.py): what a chunk holds, and what is held beside it.
chunked_cross_entropy.chunk_tokens = chunk_tokens
chunked_cross_entropy.holds_head_gradient = holds_head_gradient


def _chunk_loss(out, hidden, targets):
    import torch.nn.functional as F

    return F.cross_entropy(upcast(out.logits(hidden)), targets, reduction="sum")


def _recomputed(out, hidden, targets, chunks):
    """Each chunk checkpointed: its logits are computed again in the backward, through the module."""
    from torch.utils.checkpoint import checkpoint

    total = 0
    for start, stop in chunks:
        total = total + checkpoint(_chunk_loss, out, hidden[start:stop], targets[start:stop], use_reentrant=False)
    return total


def _chunk_gradients(out, hidden, targets, chunks, params):
    """The summed loss of every chunk, the hidden states' gradient and the parameters' gradients. The
    parameters' are summed in fp32: in bf16, tens of chunks' roundings add up to a visible error."""
    import torch

    total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
    grad_hidden, grads = torch.empty_like(hidden), None
    for start, stop in chunks:
        with torch.enable_grad():
            x = hidden[start:stop].detach().requires_grad_()
            part = _chunk_loss(out, x, targets[start:stop])
            found = torch.autograd.grad(part, [x, *params], allow_unused=True, materialize_grads=True)
        grad_hidden[start:stop] = found[0]
        if grads is None:
            grads = [g.to(torch.promote_types(g.dtype, torch.float32)) for g in found[1:]]
        else:
            for g, f in zip(grads, found[1:]):
                g.add_(f)
        total += part.detach()
    return total, grad_hidden, grads or []


@cache
def _head_loss():
    """The autograd Function, built on first use: loading plugins imports no torch."""
    import torch

    class HeadLoss(torch.autograd.Function):
        """The loss of every chunk with its gradients, taken in the forward; the backward scales them."""

        @staticmethod
        def forward(ctx, hidden, targets, out, chunks, *params):
            total, *ctx.grads = _chunk_gradients(out, hidden, targets, chunks, params)
            ctx.dtypes = [p.dtype for p in params]
            return total

        @staticmethod
        def backward(ctx, grad_total):
            grad_hidden, grads = ctx.grads
            del ctx.grads
            scaled = [g.mul_(grad_total).to(dtype) for g, dtype in zip(grads, ctx.dtypes)]
            return (grad_hidden * grad_total, None, None, None, *scaled)

    return HeadLoss


@hookimpl
def seqtune_register_losses():
    return {"chunked_cross_entropy": chunked_cross_entropy, "cross_entropy": cross_entropy}
