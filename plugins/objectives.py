"""The `sft` objective (the default): next-token prediction on the trained tokens of each row.

Rows are encoded by the framework's chat encoder and cut by `data.truncation`; a micro-batch is laid
out by the packing strategy as it is; the loss is the recipe's `train.loss` plugin, normalised over
trainable tokens by `train.loss_reduction`.
"""
from __future__ import annotations

from framework import hookimpl, make_encoder, trainable_tokens


class SFT:
    sequence_parallel = True  # its loss and counts hold when rows are split over a group
    sequences_per_row = 1
    reference = "none"
    unit = "token"
    train_on = "assistant"  # data.train_on: auto

    def encoder(self, tokenizer, truncate, max_seq_length, train_on, template, untrainable):
        return make_encoder(tokenizer, truncate, max_seq_length, train_on, template, untrainable)

    def collate(self, rows, packing, pad_token_id, padding_free):
        return packing.collate(rows, pad_token_id, padding_free)

    def units(self, rows, tensors):
        return int(trainable_tokens(tensors["labels"]))

    def loss(self, model, batch, token_loss):
        loss_sum, _ = token_loss(model, batch)
        return loss_sum, {}


def sft() -> SFT:
    return SFT()


@hookimpl
def seqtune_register_objectives():
    return {"sft": sft}
