"""The preprocessing cache: a key hashed from everything that changes the tokenized rows, and its
entries: the tokenized rows as arrow shards (each distinct row once, in source order; memory-mapped
when read back, never rewritten), the mixture's kept rows as indices into them, the mixture plan, and
the metadata (the report, the mixture's stats)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

# Bump when the encoding itself changes (masking, truncation accounting, columns).
PIPELINE_VERSION = 7  # 2: untrainable rows by cause; 3: arrow shards + kept rows; 4: their lengths; 5: distinct rows;
# 6: each row's sequences (preference pairs); 7: CSV cells read as written (text), format options
COMPLETE = "complete.json"  # written last: the entry is complete
SHARDS = "tokens-*.arrow"  # the tokenizing pass's output, one file per worker: each distinct row once
KEPT = "kept.npy"  # the mixture's rows with something to train, in mixture order, as indices into the shards
PLAN = "mixture.npz"  # the mixture plan: each row's source and index in it
LENGTHS = "lengths.npy"  # the kept rows' lengths, which every run plans its batches from


def cache_root(configured: str | None) -> Path:
    """data.cache_dir, else $SEQTUNE_CACHE, else ~/.cache/seqtune."""
    chosen = configured or os.environ.get("SEQTUNE_CACHE") or Path.home() / ".cache" / "seqtune"
    return Path(chosen) / "preprocessed"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Vocabulary, merges, normalisation, special tokens and chat template of a tokenizer."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(str(tokenizer.chat_template).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    payload = json.dumps({"version": PIPELINE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def load_cached(path: Path) -> tuple[Any, Any, Any, dict] | None:
    """The cached rows (memory-mapped, the kept ones in mixture order) as a Dataset, their lengths,
    the mixture plan, and the metadata; None when there is no complete entry."""
    if not (path / COMPLETE).is_file():
        return None
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    from framework.data.mixture import MixturePlan

    meta = json.loads((path / COMPLETE).read_text())
    plan = np.load(path / PLAN)
    kept = InMemoryTable(pa.table({"indices": pa.array(np.load(path / KEPT), type=pa.uint64())}))
    # The kept rows through an indices table, built here: Dataset.select would hash and check them.
    rows = Dataset(open_shards(path), indices_table=kept, fingerprint=f"seqtune-{path.name}")
    return (rows, np.load(path / LENGTHS).tolist(), MixturePlan(plan["source"], plan["index"],
                                                                 meta["mixture"]["sources"]), meta)


def open_shards(folder: Path) -> Any:
    """Every row the tokenizing pass wrote: its shards, memory-mapped, in source order (an arrow table)."""
    from datasets.table import ConcatenationTable, MemoryMappedTable

    return ConcatenationTable.from_tables([MemoryMappedTable.from_file(str(shard))
                                           for shard in sorted(folder.glob(SHARDS))])


def start_entry(path: Path) -> Path:
    """A fresh folder to build the entry in (the tokenizing pass writes its shards there)."""
    partial = path.with_name(f".partial-{path.name}-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def finish_entry(partial: Path, path: Path, plan: Any, kept: Any, lengths: Any, meta: dict) -> None:
    """Complete the entry: the plan, the kept rows and their lengths, the metadata last, then rename
    into place, so a crash never leaves an entry that looks complete."""
    import numpy as np

    np.savez(partial / PLAN, source=plan.source, index=plan.index)
    np.save(partial / KEPT, kept)
    np.save(partial / LENGTHS, lengths)
    (partial / COMPLETE).write_text(json.dumps(meta, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)
