"""Tokenize the mixture, apply the truncation strategy, and account for every token lost."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from framework.data.chat import TemplateError, encode_chats
from framework.errors import UserError
from framework.types import IGNORE_INDEX, Sample

PERCENTILES = (50, 90, 99)
KEEP = 0.99  # the share of trainable tokens a max_seq_length should keep; below it, prepare and plan warn
# Why a row is dropped with nothing to train (data.untrainable); its code in the `dropped` column
# is 1 + its index here, 0 for a kept row.
CAUSES = ("empty", "no_assistant_turn", "no_trainable_token", "cut_by_truncation")
CODES = {None: 0, **{cause: code for code, cause in enumerate(CAUSES, start=1)}}
COLUMNS = ("input_ids", "labels", "length", "length_before", "trainable", "trainable_before", "dropped", "sequences")
EMPTY = Sample([], [])


def encode_text(tokenizer: Any, text: str) -> Sample:
    """Plain language-modelling text: every token trained, ending with EOS so documents end."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Sample(ids, [IGNORE_INDEX] + ids[1:])


def untrainable(messages: list[dict], text: str | None, train_on: str) -> str | None:
    """Why a formatted row has nothing to train, seen before encoding it (a cause in CAUSES), or None."""
    if text is not None:
        return None if text else "empty"
    if not messages:
        return "empty"
    if train_on != "all" and not any(message["role"] == "assistant" for message in messages):
        return "no_assistant_turn"
    return None


def encode_rows(tokenizer: Any, messages: list[list[dict]], texts: list[str | None], train_on: str,
                where: Callable[[int], str] | None = None, template: str = "the chat template") -> list[Sample]:
    """Rows as the mixture holds them (chat `messages`, or plain `text` where it is not None), encoded
    whole, the chats in one batched call. A row `untrainable` sees as having nothing to train is not
    encoded: its Sample is empty. `where(i)` names row i when `template` fails for it."""
    causes = [untrainable(m, text, train_on) for m, text in zip(messages, texts)]
    return _encode(tokenizer, messages, texts, causes, train_on, where, template)


def _encode(tokenizer: Any, messages: list[list[dict]], texts: list[str | None], causes: list[str | None],
            train_on: str, where: Callable[[int], str] | None, template: str) -> list[Sample]:
    chats = [i for i, (text, cause) in enumerate(zip(texts, causes)) if text is None and cause is None]
    try:
        encoded = iter(encode_chats(tokenizer, [messages[i] for i in chats], train_on))
    except _template_errors():  # raise_exception, or Python's own errors inside the template
        _raise_for_the_failing_row(tokenizer, messages, chats, train_on, where, template)
        raise
    return [Sample([], []) if cause is not None else next(encoded) if text is None else encode_text(tokenizer, text)
            for text, cause in zip(texts, causes)]


def _raise_for_the_failing_row(tokenizer: Any, messages: list[list[dict]], chats: list[int], train_on: str,
                               where: Callable[[int], str] | None, template: str) -> None:
    """Encode the batch's chats one by one and name the first that fails, as a UserError."""
    for i in chats:
        try:
            encode_chats(tokenizer, [messages[i]], train_on)
        except _template_errors() as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            if not isinstance(exc, TemplateError) and not type(exc).__module__.startswith("jinja2"):
                reason = f"{type(exc).__name__}: {reason}"
            prefix = where(i) if where else "tokenizer.chat_template"
            raise UserError(f"{prefix}: {template} fails for this row: {reason}") from None


def _template_errors() -> tuple[type[Exception], ...]:
    """What rendering a row can raise; evaluated only when something was raised."""
    import jinja2

    return (jinja2.TemplateError, TemplateError, TypeError, ValueError, LookupError, AttributeError,
            ArithmeticError)


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
                 template: str = "the chat template", untrainable_rows: str = "drop") -> Callable:
    """`encode(rows, where)`: a batch of formatted rows ((messages, text, rejected)) as tokens, labels,
    per-row accounting columns and `dropped` (0 for a kept row, else 1 + the index of its cause in
    CAUSES). `where(i)` names row i in an error; `untrainable_rows` is data.untrainable ("error":
    the first row with nothing to train stops preprocessing)."""

    def encode(rows: Sequence[tuple[list[dict], str | None, list[dict] | None]], where: Callable[[int], str]
               ) -> dict[str, list]:
        refuse_pairs(rows, where)
        refuse_prompts(rows, where)
        messages, texts = [m for m, _, _ in rows], [t for _, t, _ in rows]
        causes = [untrainable(m, text, train_on) for m, text, _ in rows]
        fulls = _encode(tokenizer, messages, texts, causes, train_on, where, template)
        out: dict[str, list] = {k: [] for k in COLUMNS}
        for i, (full, cause) in enumerate(zip(fulls, causes)):
            kept, cause = _kept(full, cause, truncate, max_seq_length, where, i)
            if cause is not None and untrainable_rows == "error":
                raise UserError(f"{where(i)}: {_why(cause, full, max_seq_length)} (data.untrainable: error; "
                                "'drop' drops and counts such rows)")
            add_row(out, kept, full, cause)
        return out

    return encode


def add_row(out: dict[str, list], kept: Sample, full: Sample, cause: str | None) -> None:
    """Append a row's cache columns: what is kept of it (EMPTY when dropped), what it was before any
    cut, and why it was dropped (a cause in CAUSES) or None."""
    values = (kept.input_ids, kept.labels, len(kept.input_ids), len(full.input_ids), kept.num_trainable,
              full.num_trainable, CODES[cause], list(kept.sequences))
    for key, value in zip(COLUMNS, values):
        out[key].append(value)


def refuse_pairs(rows: Sequence[tuple], where: Callable[[int], str]) -> None:
    """A preference pair reaching an objective that trains single conversations is a recipe mistake."""
    for i, (_, _, rejected) in enumerate(rows):
        if rejected is not None:
            raise UserError(f"{where(i)}: is a preference pair (chosen and rejected); objective sft trains "
                            "single conversations: set objective: {name: dpo}, or give this source a conversation format")


def is_prompt_row(messages: list[dict], text: str | None) -> bool:
    """Whether a formatted row is a prompt with its reference answer (a format returning a
    `framework.Prompt`): the one kind of row with both messages and a text. A prompt without an
    answer is (messages, None): a conversation with no assistant turn, which is what it is."""
    return bool(messages) and isinstance(text, str)


def refuse_prompts(rows: Sequence[tuple], where: Callable[[int], str]) -> None:
    """A prompt reaching an objective that trains whole conversations would train its answer as plain
    text: a recipe mistake."""
    for i, (messages, text, _) in enumerate(rows):
        if is_prompt_row(messages, text):
            raise UserError(f"{where(i)}: is a prompt with a reference answer, for objective grpo; objective sft "
                            "trains whole conversations: set objective: {name: grpo}, or give this source a "
                            "conversation format (messages)")


def _kept(full: Sample, cause: str | None, truncate: Callable, max_seq_length: int, where: Callable[[int], str],
          i: int) -> tuple[Sample, str | None]:
    """What truncation leaves of row i, and why nothing is left when it is EMPTY."""
    if cause is not None:
        return EMPTY, cause
    try:
        kept = truncate_row(full, truncate, max_seq_length)
    except ValueError as exc:  # the strategy refuses the row (truncation: raise)
        raise UserError(f"{where(i)}: {exc}") from None
    if kept is None:
        return EMPTY, "cut_by_truncation" if full.num_trainable else "no_trainable_token"
    return kept, None


def _why(cause: str, full: Sample, max_seq_length: int) -> str:
    return {"empty": "the row is empty after its format (no messages, or an empty text)",
            "no_assistant_turn": "has no assistant turn to train on",
            "no_trainable_token": "the chat template renders no token to train for this row",
            "cut_by_truncation": f"has {len(full.input_ids):,} tokens and truncation to max_seq_length "
                                 f"{max_seq_length:,} leaves none of them to train"}[cause]


@dataclass
class Report:
    """What max_seq_length, the truncation strategy and rows with nothing to train did to the data.

    `dropped` counts rows_dropped by cause (CAUSES): empty after the format, no assistant turn,
    no token the template trains, or every trainable token cut by truncation."""

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
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CAUSES, 0))
    # `shortest_keeping` of the rows, for the warning's remedy: a derived figure, not part of the account
    # (None in a cache entry written before it)
    keeping_length: int | None = field(default=None, compare=False)

    @classmethod
    def from_columns(cls, columns: dict[str, Any], max_seq_length: int) -> Report:
        import numpy as np

        before, after = np.asarray(columns["length_before"]), np.asarray(columns["length"])
        trainable_before, trainable = np.asarray(columns["trainable_before"]), np.asarray(columns["trainable"])
        codes = np.asarray(columns["dropped"])
        kept = codes == 0
        return cls(max_seq_length=max_seq_length, rows_in=len(before), rows_kept=int(kept.sum()),
                   rows_truncated=int((kept & (after < before)).sum()), rows_dropped=int((~kept).sum()),
                   tokens_in=int(before.sum()), tokens_lost=int(before.sum() - after.sum()),
                   trainable_tokens_in=int(trainable_before.sum()),
                   trainable_tokens_lost=int(trainable_before.sum() - trainable.sum()),
                   # rows dropped before encoding have no length: they are not part of the spread
                   lengths_before=_percentiles(before[before > 0]), lengths_after=_percentiles(after[kept]),
                   dropped={cause: int((codes == CODES[cause]).sum()) for cause in CAUSES},
                   keeping_length=shortest_keeping(before, trainable_before))

    def summary(self) -> str:
        share = self.trainable_tokens_lost / max(self.trainable_tokens_in, 1)
        causes = ", ".join(f"{n:,} {cause.replace('_', ' ')}" for cause, n in self.dropped.items() if n)
        return (f"{self.rows_in:,} rows -> {self.rows_kept:,} kept ({self.rows_truncated:,} truncated, "
                f"{self.rows_dropped:,} dropped{': ' + causes if causes else ''}) at max_seq_length "
                f"{self.max_seq_length:,}; "
                f"{self.trainable_tokens_lost:,} trainable tokens lost ({share:.2%}); length "
                f"p50/p90/p99/max {self._row(self.lengths_before)} -> {self._row(self.lengths_after)}")

    def cut_warning(self) -> str | None:
        """One line when max_seq_length cuts more than 1 - KEEP of the trainable tokens, else None."""
        share = self.trainable_tokens_lost / max(self.trainable_tokens_in, 1)
        return cut_warning(self.max_seq_length, share, self.rows_truncated, self.dropped.get("cut_by_truncation", 0),
                           self.rows_in, self.keeping_length)

    @staticmethod
    def _row(lengths: dict[str, int]) -> str:
        return "/".join(f"{lengths[k]:,}" for k in ("p50", "p90", "p99", "max"))


def _percentiles(lengths: Any) -> dict[str, int]:
    import numpy as np

    if len(lengths) == 0:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    values = np.percentile(lengths, PERCENTILES, method="lower")
    return {**{f"p{p}": int(v) for p, v in zip(PERCENTILES, values)}, "max": int(lengths.max())}


def shortest_keeping(lengths: Any, trainable: Any, keep: float = KEEP) -> int | None:
    """The shortest length up to which whole rows hold `keep` of the trainable tokens: a max_seq_length
    that long cuts at most 1 - keep of them, whatever the truncation strategy (a row that fits is never
    cut). None when there is nothing to train."""
    import numpy as np

    lengths, trainable = np.asarray(lengths), np.asarray(trainable)
    total = int(trainable.sum())
    if total == 0:
        return None
    order = np.argsort(lengths, kind="stable")
    held = np.cumsum(trainable[order])
    return int(lengths[order][np.flatnonzero(held >= keep * total)[0]])


def cut_warning(max_seq_length: int, lost: float, truncated: int, dropped: int, rows: int,
                keeping: int | None) -> str | None:
    """`lost` (a share of the trainable tokens) in one line when it is more than 1 - KEEP, with the
    override that keeps KEEP of them when it is known; None when max_seq_length keeps enough."""
    if lost <= 1 - KEEP:
        return None
    fix = f"; data.max_seq_length={keeping} keeps {KEEP:.0%} or more" if keeping and keeping > max_seq_length else ""
    return (f"data.max_seq_length {max_seq_length:,} cuts {lost:.1%} of the trainable tokens ({truncated:,} of "
            f"{rows:,} rows truncated, {dropped:,} dropped by truncation){fix}")
