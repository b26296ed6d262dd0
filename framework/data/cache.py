"""The preprocessing cache: a key hashed from everything that changes the tokenized rows."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

# Bump when the encoding itself changes (masking, truncation accounting, columns).
PIPELINE_VERSION = 2  # 2: `file` locations in the mixture, untrainable rows dropped and counted by cause
COMPLETE = "complete.json"


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


def load_cached(path: Path) -> tuple[Any, dict] | None:
    """The cached dataset and its metadata, or None when there is no complete entry."""
    if not (path / COMPLETE).is_file():
        return None
    from datasets import load_from_disk

    return load_from_disk(str(path / "dataset")), json.loads((path / COMPLETE).read_text())


def save_cached(path: Path, dataset: Any, meta: dict) -> Any:
    """Write under a temporary name, then rename: a crash never leaves an entry that looks complete."""
    from datasets import load_from_disk

    partial = path.with_name(f".partial-{path.name}-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    dataset.save_to_disk(str(partial / "dataset"))
    (partial / COMPLETE).write_text(json.dumps(meta, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)
    return load_from_disk(str(path / "dataset"))  # memory-mapped, not the in-memory copy
