"""Everything the engine writes: checkpoints (complete or invisible), the final model, messages."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from framework.config import LoadedRecipe


def say(message: str) -> None:
    """A progress message for the user, on stderr so that stdout stays machine-readable."""
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(message)


def save_checkpoint(model: Any, tokenizer: Any, output_dir: Path, step: int, keep_last: int | None) -> Path:
    """Write under a temporary name and rename when complete, so a crash never leaves a checkpoint
    that looks complete; then drop the oldest beyond keep_last."""
    root = output_dir / "checkpoints"
    final = root / f"step-{step:08d}"
    partial = root / f".partial-step-{step:08d}"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    if keep_last:
        for old in sorted(root.glob("step-*"))[:-keep_last]:
            shutil.rmtree(old)
    return final


def save_final(model: Any, tokenizer: Any, loaded: LoadedRecipe, report: Any, output_dir: Path) -> None:
    """A Hugging Face checkpoint (safetensors, config, tokenizer with its chat template) plus the
    resolved recipe and the truncation report, so the run can be read and repeated."""
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    (output_dir / "recipe.yaml").write_text(OmegaConf.to_yaml(loaded.data))
    (output_dir / "truncation_report.json").write_text(json.dumps(vars(report), indent=2))
