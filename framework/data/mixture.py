"""Mixtures: which rows of which source, in which order, as two small index arrays.

Each source is sampled by its fraction or count (whole copies plus a seeded remainder), the picks are
concatenated in data.mixture order and shuffled with the seed: the same rows in the same order as
concatenating the sources and shuffling them with `datasets` (numpy's default generator), but no table
is ever rewritten to get there. Passes read the rows through this plan.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framework.config.schema import MixtureEntry
from framework.errors import UserError

MIX_MARKER = ".seqtune-mixture"  # in mix_dir: the cache entry its mixture.jsonl was written for


def sample_indices(size: int, entry: MixtureEntry, seed: int) -> list[int]:
    """Whole copies plus a seeded sample of the remainder, for a fraction or a count."""
    want = entry.count if entry.count is not None else round(entry.fraction * size)
    copies, remainder = divmod(want, size) if size else (0, 0)
    return list(range(size)) * copies + sorted(random.Random(seed).sample(range(size), remainder))


@dataclass
class MixturePlan:
    """Row k of the mixture is row `index[k]` of source `source[k]` (numpy arrays)."""

    source: Any
    index: Any
    stats: list[dict]

    def __len__(self) -> int:
        return len(self.source)

    def distinct(self) -> tuple[MixturePlan, Any]:
        """The distinct rows, source by source in row order (so a pass reads each source front to back
        and each row once, however often the mixture repeats it), and where each row of the mixture
        is among them."""
        import numpy as np

        keys = (self.source.astype(np.int64) << 40) | self.index.astype(np.int64)
        unique, where = np.unique(keys, return_inverse=True)
        return MixturePlan((unique >> 40).astype(np.int32), unique & ((1 << 40) - 1), self.stats), where


def plan_mixture(sizes: list[int], entries: list[MixtureEntry], seed: int) -> MixturePlan:
    """Sample each source by its fraction/count, concatenate in order, shuffle with the seed."""
    import numpy as np

    sources, indices, stats = [], [], []
    for i, (size, entry) in enumerate(zip(sizes, entries)):
        picked = np.asarray(sample_indices(size, entry, seed + i), dtype=np.int64)
        sources.append(np.full(len(picked), i, dtype=np.int32))
        indices.append(picked)
        stats.append({"source": entry.source, "rows_available": size, "rows_used": len(picked),
                      "fraction": entry.fraction, "count": entry.count})
    source, index = np.concatenate(sources), np.concatenate(indices)
    if len(source) == 0:
        raise UserError("data.mixture: the mixture has no rows; check the sources and their fractions")
    order = np.random.default_rng(seed).permutation(len(source))
    return MixturePlan(source[order], index[order], stats)


def mix_written(mix_dir: Path, key: str) -> bool:
    """Whether mix_dir already holds the mixture of cache entry `key` (it is written once per entry)."""
    marker = mix_dir / MIX_MARKER
    return marker.is_file() and marker.read_text().strip() == key and (mix_dir / "mixture.jsonl").is_file()


def finish_mix(mix_dir: Path, parts: list[Path], stats: dict[str, Any], key: str) -> None:
    """Join the workers' parts into mixture.jsonl (in training order), write the stats, and mark
    the folder as holding cache entry `key`'s mixture."""
    import shutil

    mix_dir.mkdir(parents=True, exist_ok=True)
    (mix_dir / MIX_MARKER).unlink(missing_ok=True)
    with (mix_dir / "mixture.jsonl").open("wb") as out:
        for part in parts:
            with part.open("rb") as piece:
                shutil.copyfileobj(piece, out, 1 << 24)
    (mix_dir / "mixture_stats.json").write_text(json.dumps(stats, indent=2))
    (mix_dir / MIX_MARKER).write_text(key + "\n")
