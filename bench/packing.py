"""Best-fit-decreasing packing: efficiency and speed on a million chat-like lengths.

    python bench/packing.py [--rows 1000000] [--no-trl]

Lengths: log-normal with median 400 tokens and sigma 1.0 (seed 0): 6.5% of rows exceed 2,048
tokens, 0.13% exceed 8,192, the longest is ~45k. Each run first clips them at max_seq_length (what
truncation does before packing), then packs them into bins of max_seq_length tokens.
Efficiency = real tokens / (bins x max_seq_length). Targets: >= 99.5% and <= 1 s on one core.
When `trl` is installed (`pip install 'seqtune[bench]'`), TRL's `pack_dataset(strategy="bfd")`
packs the same lengths in the same run: with its default map batches of 1,000 rows, and over the
whole dataset at once.
"""
from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np

from plugins.packing import best_fit_decreasing


def chat_like_lengths(rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.maximum(1, np.round(rng.lognormal(mean=np.log(400), sigma=1.0, size=rows))).astype(np.int64)


def seqtune_bfd(lengths: np.ndarray, capacity: int) -> tuple[float, float, int]:
    as_list = lengths.tolist()
    start = time.perf_counter()
    bins = best_fit_decreasing(as_list, capacity, seed=0)
    seconds = time.perf_counter() - start
    assert sorted(i for b in bins for i in b) == list(range(len(as_list)))
    assert max(sum(as_list[i] for i in b) for b in bins) <= capacity
    return seconds, int(lengths.sum()) / (len(bins) * capacity), len(bins)


def trl_bfd(lengths: np.ndarray, capacity: int, batch_size: int | None) -> tuple[float, float, int]:
    import datasets
    import pyarrow as pa
    from trl.data_utils import pack_dataset

    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    column = pa.LargeListArray.from_arrays(offsets, np.zeros(offsets[-1], dtype=np.int32))
    dataset = datasets.Dataset(pa.table({"input_ids": column}))
    start = time.perf_counter()
    packed = pack_dataset(dataset, capacity, strategy="bfd",
                          map_kwargs={"batch_size": batch_size, "keep_in_memory": True})
    seconds = time.perf_counter() - start
    return seconds, int(lengths.sum()) / (len(packed) * capacity), len(packed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-trl", action="store_true", help="skip TRL even when it is installed")
    args = parser.parse_args()
    raw = chat_like_lengths(args.rows)
    print(f"{args.rows:,} lengths: median {int(np.median(raw))}, p99 {int(np.percentile(raw, 99)):,}, "
          f"max {raw.max():,}; > 8,192: {(raw > 8192).mean():.2%}")
    with_trl = importlib.util.find_spec("trl") is not None and not args.no_trl
    datasets_quiet()
    for capacity in (2048, 4096):
        lengths = np.minimum(raw, capacity)
        seconds, efficiency, bins = seqtune_bfd(lengths, capacity)
        print(f"max_seq_length {capacity:,}: seqtune bfd  {efficiency:.4%} in {bins:,} bins, {seconds:5.2f} s")
        for batch_size, label in ((1000, "TRL bfd (map batches of 1,000)"), (None, "TRL bfd (whole dataset)")):
            if with_trl:
                seconds, efficiency, bins = trl_bfd(lengths, capacity, batch_size)
                print(f"{'':21}{label}  {efficiency:.4%} in {bins:,} bins, {seconds:5.2f} s")


def datasets_quiet() -> None:
    if importlib.util.find_spec("datasets"):
        import datasets

        datasets.disable_progress_bars()


if __name__ == "__main__":
    main()
