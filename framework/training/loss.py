"""How the training loss is scaled so that the gradient of an optimizer step is the recipe's
normalisation (`train.loss_reduction`). The summed loss itself comes from the `train.loss` plugin."""
from __future__ import annotations

from typing import Any

from framework.types import IGNORE_INDEX


def trainable_tokens(labels: Any) -> Any:
    """How many tokens the loss trains: the labels after the shift (nothing predicts a row's first
    token) that are not masked. A tensor; a CPU one where the caller needs a Python int cheaply."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


def scale_loss(loss_sum: Any, tokens: int, step_tokens: Any, n_micro: int, reduction: str,
               accumulation: int, world: int, sequence_parallel: int = 1) -> Any:
    """The loss whose gradient (after DDP's mean over ranks) is the recipe's normalisation.

    `tokens` are this micro-batch's trainable tokens, `step_tokens` those of the whole optimizer
    step over every rank. Under sequence parallelism `loss_sum` is this rank's part of its group's
    micro-batch: the parts' gradients add up over the group, and DDP's (or ZeRO's) mean divides by all
    `world` ranks although there are only world / N micro-batches, so per-micro-batch reductions are
    multiplied by N. token_mean needs no such factor: it divides by the step's units over all ranks."""
    if reduction == "token_mean":  # one global mean over the whole optimizer step
        return loss_sum * world / step_tokens
    if reduction == "mean":  # each micro-batch's own mean, averaged (Hugging Face's default)
        return loss_sum / max(tokens, 1) / n_micro * sequence_parallel
    return loss_sum / accumulation * sequence_parallel  # open-instruct's reduce_loss sum under accelerate's accumulate
