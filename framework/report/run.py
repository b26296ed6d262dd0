"""A run's record read back from its output_dir, finished or still running: run.json (identity,
planned and finished steps), metrics.jsonl (every logged window, every evaluation, the summary), the
checkpoints folder and best/. What `seqtune report` prints and what the model card and the loss curve are
drawn from. It reads what training wrote and imports nothing of training's."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from framework.errors import UserError

METRICS = "metrics.jsonl"
BEST = "best"  # eval.keep_best: the model of the lowest eval_loss
BEST_RECORD = "best.json"  # in output_dir/best: the step and the evaluation it was kept for


@dataclass
class RunRecord:
    output_dir: Path
    records: list[dict]  # metrics.jsonl's lines, in order (a resumed run's lines follow its first's)
    finished: Optional[int] = None  # steps, once the final model is written
    total_steps: Optional[int] = None
    checkpoints: list[str] = field(default_factory=list)  # complete checkpoints, oldest first

    @property
    def logged(self) -> list[dict]:
        """The training windows, one per logged step (a resumed run's repeat replaces the first)."""
        return list({r["step"]: r for r in self.records if "loss" in r and "step" in r}.values())

    @property
    def evaluations(self) -> list[dict]:
        return list({r["step"]: r for r in self.records if "eval_loss" in r and "step" in r}.values())

    @property
    def summary(self) -> dict:
        return next((r["summary"] for r in reversed(self.records) if "summary" in r), {})


def read_run(output_dir: str | Path) -> RunRecord:
    """The record of the run in `output_dir`; a UserError naming what is missing."""
    folder = Path(output_dir)
    if not folder.is_dir():
        raise UserError(f"{output_dir}: no such folder; give the output_dir of a seqtune run")
    metrics = folder / METRICS
    if not metrics.is_file():
        raise UserError(f"{output_dir}: has no {METRICS}; it is written by the jsonl logger "
                        "(logging.loggers: [rich, jsonl], the default)")
    records = []
    for number, line in enumerate(metrics.read_text().splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except ValueError:  # a line cut by a crash mid-write: the rest of the record still counts
            if number < len(metrics.read_text().splitlines()):
                raise UserError(f"{metrics}:{number}: is not a JSON object; the file was edited or damaged") from None
    state = _json(folder / "run.json")
    complete = sorted(p.name for p in (folder / "checkpoints").glob("step-*") if (p / "trainer_state.json").is_file())
    return RunRecord(folder, records, state.get("finished"), state.get("total_steps"), complete)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def report_rows(run: RunRecord) -> list[tuple[str, str]]:
    """(name, value) rows: status, steps, losses, throughput, MFU, memory, the last checkpoint."""
    logged, evaluations, summary = run.logged, run.evaluations, run.summary
    finished = run.finished or summary.get("steps")  # the summary line is written at the end, too
    step = logged[-1]["step"] if logged else 0
    of = f" of {run.total_steps:,}" if run.total_steps else ""
    status = (f"finished after {finished:,} steps" if finished
              else f"not finished: last logged step {step:,}{of} (running, or stopped: the same command resumes it)")
    if finished and run.total_steps and finished < run.total_steps:
        status += f"{of} (stopped early: eval.early_stopping_patience)"
    rows = [("status", status), ("train loss", _trend([r["loss"] for r in logged]))]
    if evaluations:
        best = min(evaluations, key=lambda r: r["eval_loss"])
        rows += [("eval loss", _trend([r["eval_loss"] for r in evaluations])),
                 ("best eval loss", f"{best['eval_loss']:.4g} at step {best['step']:,}"
                                    + (" (its model: best/)" if kept(run.output_dir) else ""))]
    rows += _objective_trends(logged)
    rows += [(name, value) for name, value in _throughput(logged)]
    if summary.get("train_seconds"):
        rows.append(("train time", f"{summary['train_seconds']:,.1f} s"))
    peak = max((r.get("peak_memory_gib") or 0 for r in logged), default=0)
    if peak:
        rows.append(("peak memory", f"{peak:.2f} GiB"))
    rows.append(("last checkpoint", run.checkpoints[-1] if run.checkpoints else "none"))
    return rows


# What every run logs; anything else a window holds is its objective's (DPO's rewards, GRPO's reward)
ENGINE_KEYS = {"step", "time", "loss", "lr", "grad_norm", "epoch", "tokens_per_s", "trainable_tokens_per_s",
               "padding_fraction", "peak_memory_gib", "mfu"}


def _objective_trends(logged: list[dict]) -> list[tuple[str, str]]:
    """A trend row for each metric of the objective's, and the mean per step of each timed phase."""
    names = sorted({key for record in logged for key in record} - ENGINE_KEYS)
    rows = []
    for name in names:
        values = [r[name] for r in logged if isinstance(r.get(name), (int, float))]
        if values:
            rows.append((name, f"{sum(values) / len(values):.3g} s per step" if name.startswith("time/")
                         else _trend(values)))
    return rows


def _trend(values: list[float]) -> str:
    if not values:
        return "not logged yet"
    return f"{values[0]:.4g} -> {values[-1]:.4g} ({len(values)} logged)" if len(values) > 1 else f"{values[0]:.4g}"


def _throughput(logged: list[dict]) -> list[tuple[str, str]]:
    """Means over the logged windows after the first (which holds the warm-up)."""
    windows = logged[1:] or logged
    rows = []
    for key, name, shown in (("tokens_per_s", "tokens/s", "{:,.0f}"), ("mfu", "MFU", "{:.1%}")):
        values = [r[key] for r in windows if r.get(key) is not None]
        if values:
            rows.append((name, shown.format(sum(values) / len(values))))
    return rows


def kept(output_dir: Path) -> Optional[dict]:
    """The record of output_dir/best, when the run keeps one."""
    path = Path(output_dir) / BEST / BEST_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def history(run: RunRecord) -> list[dict[str, Any]]:
    """Every training window and evaluation, for the loss curve."""
    return [r for r in run.records if "step" in r]
