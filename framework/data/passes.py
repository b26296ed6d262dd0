"""Passes over the mixture: its rows read through the plan, batch by batch, in data.num_workers
processes, each writing its share (a contiguous range of the mixture, so the parts join in mixture
order) to a file of its own, under one progress bar.

Two passes use it: tokenizing into the cache (arrow shards) and writing mix_dir (JSON Lines). Nothing
holds all rows at once: a worker reads a batch, formats it, encodes or writes it, and forgets it.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framework.data.mixture import MixturePlan
from framework.data.progress import Counter, progress_bar
from framework.data.sources import Formatted, Source

BATCH = 1000
# Batches between reopening the sources' memory maps (see Source.release): rows read in source order
# touch each page once, rows in mixture order touch pages all over the files, every batch.
RELEASE_EVERY = {"source order": 50, "mixture order": 1}
RECORD_BATCHES = 16  # batches per arrow record batch: few large ones read back fast from a cold disk
_JOB: Any = None  # the pass being run: forked workers inherit it instead of unpickling it


@dataclass
class Reader:
    """The mixture's rows through its plan: formatted batches, each row with its name for errors."""

    plan: MixturePlan
    sources: list[Source]
    release_every: int = RELEASE_EVERY["mixture order"]

    def batches(self, start: int, stop: int) -> Iterator[tuple[list[Formatted], Callable[[int], str], Any, Any]]:
        """(formatted rows, a function naming row k of the batch, their sources, their indices)."""
        for first in range(start, stop, BATCH):
            if (first - start) % (self.release_every * BATCH) == 0:
                for source in self.sources:
                    source.release()
            last = min(first + BATCH, stop)
            source, index = self.plan.source[first:last], self.plan.index[first:last]
            rows: list[Any] = [None] * len(source)
            for s in set(source.tolist()):
                at = (source == s).nonzero()[0].tolist()
                for k, row in zip(at, self.sources[s].formatted(index[at].tolist())):
                    rows[k] = row
            yield rows, self._names(source, index), source, index

    def _names(self, source: Any, index: Any) -> Callable[[int], str]:
        return lambda k: self.sources[int(source[k])].names(int(index[k]))


def run(description: str, reader: Reader, workers: int, write_part: Callable[[int, int, int, Callable], Any]
        ) -> list[Any]:
    """`write_part(part, start, stop, advance)` over `workers` contiguous ranges of the mixture, in
    forked worker processes (in this one when `workers` is 1); their results, in mixture order."""
    total = len(reader.plan)
    ranges = _ranges(total, workers)
    if len(ranges) == 1:
        with progress_bar(description, total) as advance:
            return [write_part(0, 0, total, advance)]
    import multiprocessing

    global _JOB
    context = multiprocessing.get_context("fork")
    counter = Counter(context)
    _JOB = (write_part, counter)
    with _quiet_fork(), context.Pool(len(ranges)) as pool:  # fork before the bar starts its thread
        pending = [pool.apply_async(_run_part, (part, start, stop)) for part, (start, stop) in enumerate(ranges)]
        with progress_bar(description, total, counter=counter):
            results = [result.get() for result in pending]  # a worker's UserError is raised here
    _JOB = None
    return results


def _run_part(part: int, start: int, stop: int) -> Any:
    write_part, counter = _JOB
    return write_part(part, start, stop, counter.add)


def _ranges(total: int, workers: int) -> list[tuple[int, int]]:
    workers = max(1, min(workers, -(-total // BATCH)))  # no worker without a batch
    step = -(-total // workers)
    return [(start, min(start + step, total)) for start in range(0, total, step)]


class _quiet_fork:
    """The Rust tokenizer warns in every forked child when its threads ran before the fork; the
    workers run single-threaded tokenizers anyway, so say so before forking."""

    def __enter__(self) -> None:
        self.before = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"

    def __exit__(self, *exc: Any) -> None:
        if self.before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = self.before


def write_jsonl_part(reader: Reader, folder: Path) -> Callable[[int, int, int, Callable], Path]:
    """A pass writing rows as JSON lines ({messages, text, source, row}: data.mixture index and 1-based
    row in that source; a preference pair as {chosen, rejected, source, row}), one part file per worker."""

    def write_part(part: int, start: int, stop: int, advance: Callable[[int], None]) -> Path:
        path = folder / f"part-{part:05d}.jsonl"
        with path.open("w", encoding="utf-8", buffering=1 << 20) as out:
            for rows, _, source, index in reader.batches(start, stop):
                out.writelines(json.dumps({**_row(*row), "source": int(s), "row": int(i) + 1}, ensure_ascii=False) + "\n"
                               for row, s, i in zip(rows, source, index))
                advance(len(rows))
        return path

    return write_part


def _row(messages: list[dict], text: str | None, rejected: list[dict] | None) -> dict:
    return {"messages": messages, "text": text} if rejected is None else {"chosen": messages, "rejected": rejected}


def write_arrow_part(reader: Reader, encode: Callable, folder: Path) -> Callable[[int, int, int, Callable], Path]:
    """A pass tokenizing rows (`encode`: framework.data.tokenize.make_encoder) into an arrow shard
    per worker, in the streaming format `datasets` memory-maps."""

    def write_part(part: int, start: int, stop: int, advance: Callable[[int], None]) -> Path:
        import pyarrow as pa

        path, pending = folder / f"tokens-{part:05d}.arrow", []
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, _schema()) as out:
            for rows, where, _, _ in reader.batches(start, stop):
                pending.append(_record_batch(encode(rows, where)))  # arrow at once: Python ints are 9x larger
                advance(len(rows))
                if len(pending) == RECORD_BATCHES:
                    out.write_table(pa.Table.from_batches(pending).combine_chunks())
                    pending = []
            if pending:
                out.write_table(pa.Table.from_batches(pending).combine_chunks())
        return path

    return write_part


def _schema() -> Any:
    import pyarrow as pa

    ids = pa.list_(pa.int32())
    return pa.schema([("input_ids", ids), ("labels", ids), ("length", pa.int32()), ("length_before", pa.int32()),
                      ("trainable", pa.int32()), ("trainable_before", pa.int32()), ("dropped", pa.int8()),
                      ("sequences", ids)])


def _record_batch(columns: dict[str, list]) -> Any:
    import pyarrow as pa

    schema = _schema()
    return pa.record_batch([pa.array(columns[f.name], type=f.type) for f in schema], schema=schema)
