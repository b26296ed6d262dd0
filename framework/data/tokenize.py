"""Tokenize the mixture, apply the truncation strategy, and account for every token lost."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from framework.data.chat import TemplateError, encode_chats
from framework.errors import UserError
from framework.types import IGNORE_INDEX, Sample

PERCENTILES = (50, 90, 99)


def encode_text(tokenizer: Any, text: str) -> Sample:
    """Plain language-modelling text: every token trained, ending with EOS so documents end."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Sample(ids, [IGNORE_INDEX] + ids[1:])


def encode_rows(tokenizer: Any, messages: list[list[dict]], texts: list[str | None], train_on: str
                ) -> list[Sample]:
    """Rows as the mixture holds them (chat `messages`, or plain `text` where it is not None), encoded
    whole, the chats in one batched call."""
    chats = [m for m, text in zip(messages, texts) if text is None]
    try:
        encoded = iter(encode_chats(tokenizer, chats, train_on))
    except TemplateError as exc:
        raise UserError(f"tokenizer.chat_template: {exc}") from None
    return [next(encoded) if text is None else encode_text(tokenizer, text) for text in texts]


def truncate_row(sample: Sample, truncate: Callable, max_seq_length: int) -> Sample | None:
    """Apply the strategy to an over-long row; None when nothing trainable is left."""
    if len(sample.input_ids) > max_seq_length:
        cut = truncate(sample.input_ids, sample.labels, max_seq_length)
        if cut is None:
            return None
        sample = Sample(list(cut[0]), list(cut[1]))
        if sample.labels:
            sample.labels[0] = IGNORE_INDEX  # a cut row starts anywhere: its first token is unpredicted
    return sample if sample.num_trainable else None


def make_encoder(tokenizer: Any, truncate: Callable, max_seq_length: int, train_on: str,
                 source_names: list[str]) -> Callable:
    """The batched `datasets.map` function: tokens, labels and per-row accounting columns."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in ("input_ids", "labels", "length", "length_before",
                                                "trainable", "trainable_before")}
        for i, full in enumerate(encode_rows(tokenizer, batch["messages"], batch["text"], train_on)):
            try:
                kept = truncate_row(full, truncate, max_seq_length) or Sample([], [])
            except ValueError as exc:
                where = f"{source_names[batch['source'][i]]}: row {batch['row'][i]}"
                raise UserError(f"{where}: {exc}") from None
            for key, value in (("input_ids", kept.input_ids), ("labels", kept.labels),
                               ("length", len(kept.input_ids)), ("length_before", len(full.input_ids)),
                               ("trainable", kept.num_trainable), ("trainable_before", full.num_trainable)):
                out[key].append(value)
        return out

    return encode


@dataclass
class Report:
    """What max_seq_length and the truncation strategy did to the data."""

    max_seq_length: int
    rows_in: int
    rows_kept: int
    rows_truncated: int
    rows_dropped: int
    tokens_in: int
    tokens_lost: int
    trainable_tokens_in: int
    trainable_tokens_lost: int
    lengths_before: dict[str, int]
    lengths_after: dict[str, int]

    @classmethod
    def from_columns(cls, columns: dict[str, Any], max_seq_length: int) -> Report:
        import numpy as np

        before, after = np.asarray(columns["length_before"]), np.asarray(columns["length"])
        trainable_before, trainable = np.asarray(columns["trainable_before"]), np.asarray(columns["trainable"])
        kept = after > 0
        return cls(max_seq_length=max_seq_length, rows_in=len(before), rows_kept=int(kept.sum()),
                   rows_truncated=int((kept & (after < before)).sum()), rows_dropped=int((~kept).sum()),
                   tokens_in=int(before.sum()), tokens_lost=int(before.sum() - after.sum()),
                   trainable_tokens_in=int(trainable_before.sum()),
                   trainable_tokens_lost=int(trainable_before.sum() - trainable.sum()),
                   lengths_before=_percentiles(before), lengths_after=_percentiles(after[kept]))

    def summary(self) -> str:
        share = self.trainable_tokens_lost / max(self.trainable_tokens_in, 1)
        return (f"{self.rows_in:,} rows -> {self.rows_kept:,} kept ({self.rows_truncated:,} truncated, "
                f"{self.rows_dropped:,} dropped) at max_seq_length {self.max_seq_length:,}; "
                f"{self.trainable_tokens_lost:,} trainable tokens lost ({share:.2%}); length "
                f"p50/p90/p99/max {self._row(self.lengths_before)} -> {self._row(self.lengths_after)}")

    @staticmethod
    def _row(lengths: dict[str, int]) -> str:
        return "/".join(f"{lengths[k]:,}" for k in ("p50", "p90", "p99", "max"))


def _percentiles(lengths: Any) -> dict[str, int]:
    import numpy as np

    if len(lengths) == 0:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    values = np.percentile(lengths, PERCENTILES, method="lower")
    return {**{f"p{p}": int(v) for p, v in zip(PERCENTILES, values)}, "max": int(lengths.max())}
