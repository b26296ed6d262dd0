"""Console and file loggers. Each is an object whose methods implement lifecycle hooks."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from framework import RunInfo, hookimpl


def format_metrics(metrics: dict[str, float]) -> str:
    """`loss 1.234  lr 5.0e-06  tok/s 1,234`: short, fixed-style figures for one line."""
    parts = []
    for key, value in metrics.items():
        if key == "lr":
            parts.append(f"lr {value:.2e}")
        elif key.endswith("per_s") or key.endswith("tokens"):
            parts.append(f"{key.replace('_per_s', '/s')} {value:,.0f}")
        else:
            parts.append(f"{key} {value:.4g}")
    return "  ".join(parts)


class RichLogger:
    """A line per logging step (in a terminal's scrollback too, above the bar) and a progress bar with
    the latest loss, lr and tokens/s."""

    def __init__(self, show: tuple[str, ...]):
        from framework import stderr_console

        # the console every bar of the run draws on: an evaluation's bar shows beneath this one
        self.console = stderr_console()
        self.show = show
        self.progress = None
        self.latest: dict[str, float] = {}

    @hookimpl
    def seqtune_train_start(self, run: RunInfo) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console.print(f"[bold]{run.run_name}[/]: {run.num_rows:,} rows, {run.total_steps:,} "
                           f"optimizer steps, {run.num_parameters:,} parameters -> {run.output_dir}")
        self.progress = Progress(TextColumn("[bold blue]train"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[metrics]}"),
                                 console=self.console, transient=False)
        self.task = self.progress.add_task("train", total=run.total_steps, completed=run.start_step, metrics="")
        self.progress.start()

    @hookimpl
    def seqtune_step_end(self, step: int) -> None:
        self.progress.update(self.task, completed=step)

    @hookimpl
    def seqtune_log(self, step: int, metrics: dict[str, float]) -> None:
        self.latest.update(metrics)  # the bar keeps the last training figures beside the last evaluation
        self.progress.update(self.task, metrics=format_metrics({k: self.latest[k] for k in self.show
                                                                if k in self.latest}))
        # printed above the live bar, so the record of the run stays on screen as the bar moves on
        shown = format_metrics({k: v for k, v in metrics.items() if k in self.show})
        self.progress.console.print(f"step {step}: {shown}", highlight=False)

    @hookimpl
    def seqtune_checkpoint_saved(self, step: int, path: str) -> None:
        self.progress.console.print(f"checkpoint at step {step}: {path}", highlight=False)

    @hookimpl
    def seqtune_train_end(self, summary: dict[str, float]) -> None:
        from rich.table import Table

        self.progress.stop()
        table = Table(title="run summary", show_header=False)
        for key, value in summary.items():
            table.add_row(key, f"{value:,.4g}" if isinstance(value, float) else f"{value:,}")
        self.console.print(table)


def rich(output_dir: str, *, show: list[str] = ("loss", "eval_loss", "rewards/accuracy", "eval_rewards/accuracy",
                                                "rewards/margin", "lr", "tokens_per_s")) -> RichLogger:
    return RichLogger(tuple(show))


class JsonlLogger:
    """One JSON object per logging step in output_dir (the run's machine-readable record)."""

    def __init__(self, path: Path):
        self.path = path
        self.file: Any = None

    @hookimpl
    def seqtune_train_start(self, run: RunInfo) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A resumed run continues the record of the run it resumes.
        self.file = self.path.open("a" if run.start_step else "w", encoding="utf-8")

    @hookimpl
    def seqtune_log(self, step: int, metrics: dict[str, float]) -> None:
        self.file.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        self.file.flush()

    @hookimpl
    def seqtune_train_end(self, summary: dict[str, float]) -> None:
        self.file.write(json.dumps({"summary": summary}) + "\n")
        self.file.close()


def jsonl(output_dir: str, *, filename: str = "metrics.jsonl") -> JsonlLogger:
    return JsonlLogger(Path(output_dir) / filename)


@hookimpl
def seqtune_register_loggers():
    return {"rich": rich, "jsonl": jsonl}
