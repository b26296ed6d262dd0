"""Packing strategies: how tokenized rows become micro-batches.

A plan is a list of micro-batches; a micro-batch is a list of rows; a row is a list of pieces,
each a sample index or an (index, start, stop) slice of one. Plans are made before training, so
the number of micro-batches and optimizer steps is exact.
"""
from __future__ import annotations

import random
from bisect import bisect_left, insort
from typing import Annotated, Optional

from framework import IGNORE_INDEX, Bounds, Sample, hookimpl


def _chunks(rows: list, size: int) -> list[list]:
    return [rows[i:i + size] for i in range(0, len(rows), size)]


class PadToLongest:
    """No packing: shuffled rows, padded to the longest row of each micro-batch."""

    supports_padding_free = False  # rows keep their padding and attention_mask
    packs_rows = False  # one sample per row

    def __init__(self, pad_to_multiple_of: Optional[int]):
        self.pad_to_multiple_of = pad_to_multiple_of or 1

    def plan(self, lengths: list[int], batch_size: int, max_seq_length: int, seed: int) -> list[list[list]]:
        import numpy as np

        order = np.random.default_rng(seed).permutation(len(lengths)).tolist()  # 20x random.shuffle's speed
        return _chunks([[i] for i in order], batch_size)

    def collate(self, rows: list[list[Sample]], pad_token_id: int, padding_free: bool = False):
        import torch

        samples = [row[0] for row in rows]
        longest = max(len(s.input_ids) for s in samples)
        width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(samples), width), dtype=torch.long)
        for i, sample in enumerate(samples):
            n = len(sample.input_ids)
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(sample.input_ids), torch.tensor(sample.labels), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "num_tokens": mask.sum()}


def none(*, pad_to_multiple_of: Optional[Annotated[int, Bounds(ge=1)]] = None) -> PadToLongest:
    return PadToLongest(pad_to_multiple_of)


def best_fit_decreasing(lengths: list[int], capacity: int, seed: int) -> list[list[int]]:
    """Bins of at most `capacity` tokens: longest items first, each into the fullest bin it fits.

    All items of one length are placed together. Open bins sit in buckets by remaining room; the
    tightest bucket that fits takes items first, and a bin keeps the same-length items it can hold
    (after one, it is the tightest fit for the next), so the work is a few list operations per bin
    touched rather than a search per item. Items of equal length are shuffled with the seed, so
    the seed decides which rows share a bin.
    """
    rng = random.Random(seed)
    by_length: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        by_length.setdefault(length, []).append(index)
    if by_length and max(by_length) > capacity:
        raise ValueError(f"a row of {max(by_length)} tokens cannot fit a bin of {capacity}")
    rooms = _Rooms(capacity)
    bins: list[list[int]] = []
    for length in sorted(by_length, reverse=True):
        items = by_length[length]
        rng.shuffle(items)
        placed = _fill_open_bins(items, length, rooms, bins)
        for start in range(placed, len(items), max(1, capacity // length)):  # new bins, filled alike
            group = items[start:start + max(1, capacity // length)]
            rooms.add(capacity - length * len(group), len(bins))
            bins.append(group)
    return bins


class _Rooms:
    """Open bins by remaining room, with a sorted list of the rooms that have any bin."""

    def __init__(self, capacity: int):
        self.bins: list[list[int]] = [[] for _ in range(capacity + 1)]
        self.nonempty: list[int] = []

    def add(self, room: int, bin_id: int) -> None:
        if room > 0:
            if not self.bins[room]:
                insort(self.nonempty, room)
            self.bins[room].append(bin_id)

    def tightest(self, at_least: int) -> int | None:
        i = bisect_left(self.nonempty, at_least)
        return self.nonempty[i] if i < len(self.nonempty) else None

    def take(self, room: int, count: int) -> list[int]:
        bucket = self.bins[room]
        chosen = bucket[len(bucket) - count:]
        del bucket[len(bucket) - count:]
        if not bucket:
            self.nonempty.remove(room)
        return chosen


def _fill_open_bins(items: list[int], length: int, rooms: _Rooms, bins: list[list[int]]) -> int:
    placed = 0
    while placed < len(items):
        room = rooms.tightest(length)
        if room is None:
            break
        per_bin = room // length
        wanted = -(-(len(items) - placed) // per_bin)
        for bin_id in rooms.take(room, min(wanted, len(rooms.bins[room]))):
            group = items[placed:placed + per_bin]
            bins[bin_id].extend(group)
            placed += len(group)
            rooms.add(room - length * len(group), bin_id)
    return placed


class BestFitDecreasing:
    """Rows of up to max_seq_length tokens holding several samples; attention stays inside each."""

    pad_to_multiple_of = 1
    supports_padding_free = True
    packs_rows = True

    def plan(self, lengths: list[int], batch_size: int, max_seq_length: int, seed: int) -> list[list[list]]:
        bins = best_fit_decreasing(lengths, max_seq_length, seed)
        random.Random(seed + 1).shuffle(bins)  # no micro-batch of only the longest rows
        return _chunks(bins, batch_size)

    def collate(self, rows: list[list[Sample]], pad_token_id: int, padding_free: bool = False):
        """Samples end to end with position_ids restarting at 0 for each, which is how transformers
        tells the sequences apart: a block-diagonal mask on the sdpa/eager path, flash-attention's
        variable-length kernel when `padding_free` puts the whole micro-batch in one row. Padding
        is its own sequence with masked labels. A padding-free row also carries every sequence boundary
        and the longest sequence (`cu_seq_lens_q/k`, `max_length_q/k`), as flash-attention's varlen
        kernel takes them: given, transformers need not work them out of position_ids in every layer,
        reading the device each time."""
        import torch

        rows = [[s for row in rows for s in row]] if padding_free else rows
        width = max(sum(len(s.input_ids) for s in row) for row in rows)
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            at = 0
            for sample in row:
                n = len(sample.input_ids)
                ids[r, at:at + n], labels[r, at:at + n] = torch.tensor(sample.input_ids), torch.tensor(sample.labels)
                positions[r, at:at + n] = torch.arange(n)
                at += n
            if at < width:  # the padding tail is a sequence of its own, with nothing trained
                positions[r, at:] = torch.arange(width - at)
        real = sum(len(s.input_ids) for row in rows for s in row)
        tensors = {"input_ids": ids, "labels": labels, "position_ids": positions, "num_tokens": torch.tensor(real)}
        if padding_free:  # one row, no padding: the boundaries are the sequences'
            lengths = torch.tensor([len(s.input_ids) for s in rows[0]], dtype=torch.int32)
            cu_seq_lens = torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
            longest = int(lengths.max())
            tensors.update(cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens, max_length_q=longest,
                           max_length_k=longest)
        return tensors


def bfd() -> BestFitDecreasing:
    return BestFitDecreasing()


class Wrapped:
    """All samples end to end, cut into rows of exactly max_seq_length tokens. Rows cross document
    boundaries (attention too): meant for `text` data, as in pre-training."""

    pad_to_multiple_of = 1
    supports_padding_free = False
    packs_rows = True

    def plan(self, lengths: list[int], batch_size: int, max_seq_length: int, seed: int) -> list[list[list]]:
        order = list(range(len(lengths)))
        random.Random(seed).shuffle(order)
        rows, row, room = [], [], max_seq_length
        for index in order:
            start = 0
            while start < lengths[index]:
                take = min(room, lengths[index] - start)
                row.append((index, start, start + take))
                start, room = start + take, room - take
                if room == 0:
                    rows.append(row)
                    row, room = [], max_seq_length
        if row:
            rows.append(row)
        return _chunks(rows, batch_size)

    def collate(self, rows: list[list[Sample]], pad_token_id: int, padding_free: bool = False):
        joined = [Sample(sum((s.input_ids for s in row), []), sum((s.labels for s in row), [])) for row in rows]
        return PadToLongest(None).collate([[s] for s in joined], pad_token_id)


def wrapped() -> Wrapped:
    return Wrapped()


@hookimpl
def seqtune_register_packing():
    return {"none": none, "bfd": bfd, "wrapped": wrapped}
