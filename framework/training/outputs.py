"""What the engine writes besides checkpoints: the final model and the run's record, and messages."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from framework.config import LoadedRecipe


def say(message: str) -> None:
    """A progress message for the user, on stderr so that stdout stays machine-readable; in a
    multi-process run only the main process speaks."""
    from rich.console import Console

    if int(os.environ.get("RANK", "0")) != 0:
        return
    Console(stderr=True, highlight=False, soft_wrap=True).print(message)


def warn(message: str) -> None:
    """A one-line warning: the run goes on, but the user should know."""
    from rich.markup import escape

    say(f"[yellow]warning[/]: {escape(message)}")


def save_final(model: Any, tokenizer: Any, loaded: LoadedRecipe, report: Any, output_dir: Path,
               state_dict: dict | None = None) -> None:
    """A Hugging Face checkpoint (safetensors, config, tokenizer with its chat template) plus the
    resolved recipe and the truncation report, so the run can be read and repeated."""
    model.save_pretrained(output_dir, state_dict=state_dict)
    tokenizer.save_pretrained(output_dir)
    (output_dir / "recipe.yaml").write_text(OmegaConf.to_yaml(loaded.data))
    (output_dir / "truncation_report.json").write_text(json.dumps(vars(report), indent=2))
