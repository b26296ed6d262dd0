"""What `seqtune check --samples N` shows of the data: rows as the model sees them, and the run's size."""
from __future__ import annotations

from typing import Any

from rich.text import Text

from framework.data.tokenize import truncate_row
from framework.types import IGNORE_INDEX, Sample


def render_sample(tokenizer: Any, full: Sample, kept: Sample | None) -> Text:
    """Trained tokens bold green, masked tokens dim, and where truncation cut the row."""
    text = Text()
    shown = kept.input_ids if kept is not None else []
    for token, label in zip(shown, kept.labels if kept is not None else []):
        piece = tokenizer.decode([token])
        text.append(piece, style="bold green" if label != IGNORE_INDEX else "dim")
    if kept is None:
        text.append(f"[row dropped: {len(full.input_ids):,} tokens, nothing trainable would be left]",
                    style="bold red")
    elif len(kept.input_ids) < len(full.input_ids):
        lost = full.num_trainable - kept.num_trainable
        text.append(f" ✂ [cut here: {len(full.input_ids) - len(kept.input_ids):,} tokens and {lost:,} "
                    "trainable tokens dropped]", style="bold red")
    return text


def samples_to_show(tokenizer: Any, conversations: list[Any], truncate: Any, max_len: int,
                    train_on: str) -> list[tuple[Sample, Sample | None]]:
    from framework.chat import encode_chats

    fulls = encode_chats(tokenizer, conversations, train_on)
    return [(full, truncate_row(full, truncate, max_len)) for full in fulls]


def run_size(recipe: Any, plan: Any, lengths: list[int]) -> list[tuple[str, str]]:
    """Effective batch, tokens per optimizer step, steps and warmup steps, as (name, value) rows."""
    from plugins.schedulers import warmup_steps_of

    train, launch = recipe.train, recipe.launch
    batch = train.per_device_batch_size * train.gradient_accumulation_steps * launch.num_processes
    options = recipe.scheduler.options
    warmup = warmup_steps_of(plan.total_steps, options.get("warmup_ratio", 0.0), options.get("warmup_steps"))
    tokens = sum(lengths) * len(plan.epochs) / max(plan.total_steps, 1)
    unit = "bins" if recipe.data.packing.name == "bfd" else "rows"
    return [("effective batch", f"{batch:,} {unit} ({train.per_device_batch_size} x "
                                f"{train.gradient_accumulation_steps} accumulation x {launch.num_processes} processes)"),
            ("tokens per optimizer step", f"{tokens:,.0f} on average"),
            ("optimizer steps", f"{plan.total_steps:,} ({len(plan.epochs)} epoch(s))"),
            ("warmup steps", f"{warmup:,}"),
            ("packing efficiency", f"{plan.efficiency:.2%}")]
