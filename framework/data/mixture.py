"""Mixtures: each formatted source sampled by its fraction or count, concatenated and shuffled."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from framework.config.schema import DataConfig, MixtureEntry
from framework.errors import UserError


def sample_indices(size: int, entry: MixtureEntry, seed: int) -> list[int]:
    """Whole copies plus a seeded sample of the remainder, for a fraction or a count."""
    want = entry.count if entry.count is not None else round(entry.fraction * size)
    copies, remainder = divmod(want, size) if size else (0, 0)
    return list(range(size)) * copies + sorted(random.Random(seed).sample(range(size), remainder))


def mix(formatted: list[Any], data: DataConfig, seed: int) -> tuple[Any, list[dict]]:
    """Sample each formatted source by its fraction/count, concatenate and shuffle with the seed."""
    from datasets import concatenate_datasets

    picked, stats = [], []
    for i, (dataset, entry) in enumerate(zip(formatted, data.mixture)):
        indices = sample_indices(len(dataset), entry, seed + i)
        picked.append(dataset.select(indices))
        stats.append({"source": entry.source, "rows_available": len(dataset), "rows_used": len(indices),
                      "fraction": entry.fraction, "count": entry.count})
    mixture = concatenate_datasets(picked)
    if len(mixture) == 0:
        raise UserError("data.mixture: the mixture has no rows; check the sources and their fractions")
    return mixture.shuffle(seed=seed).flatten_indices(), stats


def write_mix(mix_dir: Path, mixture: Any, stats: dict[str, Any]) -> None:
    """The mixed, untokenized rows in training order (JSONL), and the mixture's stats."""
    mix_dir.mkdir(parents=True, exist_ok=True)
    with (mix_dir / "mixture.jsonl").open("w", encoding="utf-8") as out:
        for row in mixture:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    (mix_dir / "mixture_stats.json").write_text(json.dumps(stats, indent=2))
