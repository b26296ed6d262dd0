"""Small types shared by the engine and plugins (part of the public surface)."""
from __future__ import annotations

import functools
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Union

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100  # label value that the loss skips (masked prompt, padding)


@dataclass
class Sample:
    """One tokenized row: `labels[i]` is the target for `input_ids[i]` (the model shifts).

    A row of several sequences that train together (a preference pair: chosen, then rejected) holds
    them end to end, with `sequences` their lengths; empty for a row of one sequence."""

    input_ids: list[int]
    labels: list[int]
    sequences: tuple[int, ...] = ()

    def split(self) -> list[Sample]:
        """The row's sequences, each a Sample of its own."""
        if not self.sequences:
            return [self]
        out, at = [], 0
        for n in self.sequences:
            out.append(Sample(self.input_ids[at:at + n], self.labels[at:at + n]))
            at += n
        return out

    @property
    def num_trainable(self) -> int:
        return len(self.labels) - self.labels.count(IGNORE_INDEX)


class Rows(list):
    """Row dicts a dataset loader returns together with where each came from, so that an error
    found later (in the row's format, its chat template, its truncation) names `file:line`
    rather than the row's position in the source.

    Build it file by file with `add_file`; `files[k]` is (name as errors show it, whether the
    numbers are lines), and row i is number `numbers[i]` of file `file_of[i]`. A loader that
    returns a plain list or a `datasets.Dataset` has its rows named `<source>: row N` instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self.files: list[tuple[str, bool]] = []
        self.file_of = array("i")  # compact: a million rows are a few megabytes, not tuples
        self.numbers = array("q")

    def add_file(self, name: str, rows: Sequence[dict[str, Any]],
                 lines: Optional[Sequence[int]] = None) -> None:
        """Append one file's rows; `lines` are their 1-based physical lines in it (blank lines
        counted), or None for a file without lines (its rows are then named `name: row N`)."""
        if lines is not None and len(lines) != len(rows):
            raise ValueError(f"{name}: {len(rows)} rows but {len(lines)} line numbers")
        self.files.append((name, lines is not None))
        self.extend(rows)
        self.file_of.extend([len(self.files) - 1] * len(rows))
        self.numbers.extend(lines if lines is not None else range(1, len(rows) + 1))


@dataclass
class SourceTable:
    """Rows a dataset loader read into a `datasets.Dataset` (arrow, memory-mapped: what large data
    needs), with the files they came from, so that an error found later names the file and line.

    `files` lists (file as errors name it, how many of the rows come from it) in row order. With
    `lines`, a file's rows are its non-blank lines in order (JSON Lines): an error about one counts
    the file's lines to name it (`file:line`, blank lines counted); else it is `file: row N`.
    """

    dataset: Any
    files: list[tuple[str, int]]
    lines: bool = True


Piece = Union[int, tuple[int, int, int]]  # a sample index, or (index, start, stop): a slice of one
# batch keys the model receives: flash-attention's sequence boundaries (padding-free rows), and a
# sequence-parallel rank's shards (framework.model.ulysses.Shards), which reach the attention wrapper
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
                "max_length_k", "sequence_parallel")


class Packing(Protocol):
    """What a packing factory returns: a micro-batch plan, a collate function, and what the planner
    and the dry run read about its layout."""

    pad_to_multiple_of: int  # rows are padded to a multiple of this (1: no rounding)
    supports_padding_free: bool  # whether collate honours padding_free (one row, no padding)
    packs_rows: bool  # whether a row holds several samples, filled up to max_seq_length

    def plan(self, lengths: list[int], batch_size: int, max_seq_length: int, seed: int
             ) -> list[list[list[Piece]]]:
        """Micro-batches of rows of pieces; deterministic for a seed (the engine passes seed + epoch)."""

    def collate(self, rows: list[list[Sample]], pad_token_id: int, padding_free: bool = False
                ) -> dict[str, torch.Tensor]:
        """One micro-batch as tensors: the MODEL_INPUTS it uses, `labels`, and `num_tokens` (the
        real, non-padding tokens). `padding_free` asks for one row without padding (flash-attention),
        with flash-attention's `cu_seq_lens_q/k` (int32 tensor) and `max_length_q/k` (Python ints)."""


@dataclass
class Pair:
    """What a preference format returns for one row: two conversations with the same prompt turns,
    differing in their final assistant turn."""

    chosen: list[dict]
    rejected: list[dict]


@dataclass
class Prompt:
    """What a prompt format returns for one row (online RL, objective grpo): the conversation to
    complete, ending before the answer, and the reference answer rewards compare completions with
    (None when the rewards need none). Formatted as the row (messages, answer, None)."""

    messages: list[dict]
    answer: Optional[str] = None


@dataclass
class BoundReward:
    """One entry of an objective's `rewards:` option, bound (hookspecs: options that name plugins): its
    registered name, its weight in the sum, and its factory with the recipe's options applied.
    `framework.score_rewards` scores with a list of them."""

    name: str
    weight: float
    factory: Callable[[], Any]

    @functools.cached_property
    def reward(self) -> Callable[[list[str], list[Optional[str]], list[str]], list[float]]:
        """The reward itself, built (its factory called) once, when first needed."""
        return self.factory()

    @property
    def needs_answer(self) -> bool:
        """Whether it compares with the row's reference answer, as its plugin declares (default True)."""
        return bool(_declared(self.factory, "needs_answer", True))

    @property
    def correctness(self) -> bool:
        """Whether it scores 1 for a correct answer and 0 otherwise (an accuracy), as declared (default False)."""
        return bool(_declared(self.factory, "correctness", False))

    def __getstate__(self) -> dict[str, Any]:
        # a copy (a worker process, a cache fingerprint) carries the recipe's choice, not a built reward
        return {key: value for key, value in self.__dict__.items() if key != "reward"}


def _declared(factory: Callable, attribute: str, default: bool) -> Any:
    from framework.registry.factories import declared  # here: the registry imports this module

    return declared(factory, attribute, default=default)


class Objective(Protocol):
    """What an objective factory returns (`objective: {name: dpo, ...}`): how rows are encoded, laid
    out in micro-batches and scored. See hookspecs.seqtune_register_objectives."""

    sequences_per_row: int  # sequences a data row trains (SFT 1, a preference pair 2): for the planner
    reference: str  # "none", "live" or "cached": what the engine provides as batch["reference_logps"]
    unit: str  # what train.loss_reduction divides by, as logs name it ("token", "pair")
    # Optional: `sequence_names` (how `check --samples` labels a row's sequences), `uses_token_loss`
    # (False: the recipe's train.loss is not used, and setting it is warned about), `sequence_parallel`
    # (True: it runs split over a group) and `label_keys` (its per-token keys about the predicted token,
    # which the engine shifts with the labels when it splits rows), `train_on` (what data.train_on: auto
    # means for it: "assistant" when not declared).

    def encoder(self, tokenizer: Any, truncate: Any, max_seq_length: int, train_on: str, template: str,
                untrainable: str) -> Any:
        """`encode(rows, where) -> columns` for the preprocessing pass (see framework.data.tokenize)."""

    def collate(self, rows: list[list[Sample]], packing: Packing, pad_token_id: int, padding_free: bool
                ) -> dict[str, torch.Tensor]:
        """A micro-batch's tensors, as the packing strategy lays its rows out, plus what the loss reads."""

    def units(self, rows: list[list[Sample]], tensors: dict[str, torch.Tensor]) -> int:
        """How many units (tokens, pairs) the micro-batch trains, counted on the CPU (from its rows or
        the tensors `collate` made, before they reach the device)."""

    def sequence_logps(self, model: Any, batch: dict) -> torch.Tensor:
        """Per data row, each sequence's summed log-probability of its trained tokens: (rows, sequences)."""

    def loss(self, model: Any, batch: dict, token_loss: Any) -> tuple[Any, dict[str, Any]]:
        """(the summed loss over the micro-batch's units, metric sums over them). `token_loss` is the
        recipe's train.loss plugin."""


@dataclass
class RunInfo:
    """What lifecycle hooks learn about a run at `seqtune_train_start`."""

    run_name: str
    output_dir: str
    recipe: dict[str, Any]
    total_steps: int
    steps_per_epoch: int
    num_rows: int
    num_parameters: int
    start_step: int = 0  # > 0 when the run resumed from a checkpoint
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Bounds:
    """Limits a number (or each number of a list) must respect: `Annotated[float, Bounds(gt=0)]` on a
    plugin option, checked when the recipe's options are bound."""

    gt: Optional[float] = None
    ge: Optional[float] = None
    lt: Optional[float] = None
    le: Optional[float] = None

    def __str__(self) -> str:
        if self.ge is not None and self.le is not None:
            return f"between {self.ge:g} and {self.le:g}"
        low = f"above {self.gt:g}" if self.gt is not None else (f"at least {self.ge:g}" if self.ge is not None else "")
        high = f"below {self.lt:g}" if self.lt is not None else (f"at most {self.le:g}" if self.le is not None else "")
        return " and ".join(part for part in (low, high) if part)

    def holds(self, value: float) -> bool:
        return ((self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
                and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le))
