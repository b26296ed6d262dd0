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
               accumulation: int, world: int) -> Any:
    """The loss whose gradient (after DDP's mean over ranks) is the recipe's normalisation.

    `tokens` are this micro-batch's trainable tokens, `step_tokens` those of the whole optimizer
    step over every rank."""
    if reduction == "token_mean":  # one global mean over the whole optimizer step
        return loss_sum * world / step_tokens
    if reduction == "mean":  # each micro-batch's own mean, averaged (Hugging Face's default)
        return loss_sum / max(tokens, 1) / n_micro
    return loss_sum / accumulation  # open-instruct's reduce_loss sum under accelerate's accumulate
