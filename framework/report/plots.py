"""PNG plots for people: a run's loss curve, and `seqtune plan`'s memory chart and length histogram.

Each public function builds its figure with a `_figure_*` builder (tests inspect those) and writes a
PNG. matplotlib is an optional extra (`seqtune[plot]`), imported only when a plot is asked for.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from framework.errors import UserError

_DPI = 150
_SIZE = (8, 4.5)  # inches: 1200 x 675 pixels at 150 dpi
_NO_FIT = "#d62728"  # the capacity line and the "does not fit" region


def matplotlib_pyplot() -> Any:
    """pyplot on the non-interactive Agg backend (no display needed), or a UserError naming the extra."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise UserError("plots need matplotlib: pip install 'seqtune[plot]'") from None
    # a notebook that already chose its backend keeps it; everyone else gets one that needs no display
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_png(path: Path) -> None:
    """Fail before any work when a plot could not be written as asked."""
    if path.suffix.lower() != ".png":
        raise UserError(f"{path}: plots are written as PNG; give a path ending in .png")
    matplotlib_pyplot()


def loss_curve(records: list[dict], path: Path, title: str) -> Path:
    """Training loss (and evaluation loss, when recorded) against the optimizer step."""
    return _save(_figure_loss(records, title), path)


def memory_chart(curves: dict[str, list[tuple[int, float]]], gpu_label: str, gpu_gib: float, path: Path,
                 title: str) -> Path:
    """Memory per GPU against max_seq_length, one line per curve, with the GPU's capacity drawn."""
    return _save(_figure_memory(curves, gpu_label, gpu_gib, title), path)


def length_histogram(lengths: list[int], candidates: list[int], path: Path, title: str) -> Path:
    """Tokens per row, with each candidate max_seq_length and the share of rows longer than it."""
    return _save(_figure_lengths(lengths, candidates, title), path)


def _save(figure: Any, path: Path) -> Path:
    check_png(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the chart's title in the PNG's metadata too: what a file viewer (and a test) reads without pixels
    title = figure.axes[0].get_title() if figure.axes else ""
    try:
        figure.savefig(path, dpi=_DPI, format="png", metadata={"Title": title})
    finally:
        matplotlib_pyplot().close(figure)  # pyplot keeps every open figure alive otherwise
    return path


def _figure_loss(records: list[dict], title: str) -> Any:
    train = _series(records, "loss")
    evaluation = _series(records, "eval_loss")
    if not train and not evaluation:
        raise UserError("no loss to plot: no record has a 'step' with a 'loss' or an 'eval_loss'")
    figure, ax = matplotlib_pyplot().subplots(figsize=_SIZE, layout="constrained")
    if train:
        # a lone point draws no line, so it gets a marker
        ax.plot(*zip(*train), label="train loss", color="C0", marker="o" if len(train) == 1 else None)
    if evaluation:
        ax.plot(*zip(*evaluation), label="eval loss", color="C1", marker="o")
    losses = [loss for _, loss in train + evaluation]
    if min(losses) > 0 and max(losses) / min(losses) > 10:
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.4, not 4 x 10^-1
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    return figure


def _series(records: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) of each record that has both and a finite value, in step order."""
    found = [(r["step"], float(r[key])) for r in records
             if isinstance(r, dict) and r.get("step") is not None and isinstance(r.get(key), (int, float))]
    return sorted(point for point in found if math.isfinite(point[1]))


def _figure_memory(curves: dict[str, list[tuple[int, float]]], gpu_label: str, gpu_gib: float,
                   title: str) -> Any:
    figure, ax = matplotlib_pyplot().subplots(figsize=(10, 4.5), layout="constrained")
    ax.set_xscale("log", base=2)
    for i, (label, points) in enumerate(curves.items()):
        # each later line thinner, so one that equals an earlier one (all savers = the best) still shows
        ax.plot(*zip(*points), label=label, marker="os^Dv"[i % 5], color=f"C{i}",
                linewidth=max(2.4 - 0.5 * i, 0.8), markersize=max(8 - 1.3 * i, 3.5))
    ax.axhline(gpu_gib, color=_NO_FIT, linestyle="--", label=f"{gpu_label}: {gpu_gib:g} GiB")
    top = _memory_top(curves, gpu_gib)
    ax.set_ylim(0, top)
    ax.axhspan(gpu_gib, top, color=_NO_FIT, alpha=0.08, label="does not fit")
    _note_off_chart(ax, curves, top)
    _log2_ticks(ax, [n for points in curves.values() for n, _ in points])
    ax.set_xlabel("max_seq_length (tokens)")
    ax.set_ylabel("memory per GPU (GiB)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    # beside the axes: inside, it would hide the lines wherever they run
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    return figure


def _memory_top(curves: dict[str, list[tuple[int, float]]], gpu_gib: float) -> float:
    """The y limit: the highest point, but no more than twice the GPU, so the region around the
    capacity (the one a choice is made in) is not squashed by lengths far out of reach; yet high
    enough that every curve shows its lowest point, even when nothing comes near fitting."""
    highest = max(gib for points in curves.values() for _, gib in points)
    lowest_of_each = max(min(gib for _, gib in points) for points in curves.values())
    return max(min(highest, 2 * gpu_gib), gpu_gib, lowest_of_each) * 1.08


def _note_off_chart(ax: Any, curves: dict[str, list[tuple[int, float]]], top: float) -> None:
    """Say where the lines that leave the chart end, since their points above it are not drawn."""
    peaks = {label: max(points, key=lambda point: point[1]) for label, points in curves.items()}
    above = [f"{label}: {gib:,.0f} GiB at {n:,}" for label, (n, gib) in peaks.items() if gib > top]
    if above:
        # under the legend, beside the axes: inside, it could cover the line it speaks of
        ax.text(1.02, 0.0, "above the chart, at most:\n" + "\n".join(above), transform=ax.transAxes,
                ha="left", va="bottom", fontsize="small", color="0.25")


def _figure_lengths(lengths: list[int], candidates: list[int], title: str) -> Any:
    import numpy as np

    if not lengths:
        raise UserError("no token lengths to plot")
    low, high = max(min(lengths), 1), max(max(lengths), 2)
    shown = _candidates_in_view(sorted(candidates), low, high)
    figure, ax = matplotlib_pyplot().subplots(figsize=_SIZE, layout="constrained")
    # whole-token edges: log-spaced edges finer than one token would leave empty bins between short rows
    edges = np.unique(np.floor(np.geomspace(low, high + 1, 41)))
    ax.set_xscale("log", base=2)
    ax.hist(lengths, bins=edges, color="C0", alpha=0.8)
    left, right = min([low, *shown]) / 1.2, max([high, *shown]) * 1.2
    powers = [2 ** k for k in range(math.ceil(math.log2(left)), math.floor(math.log2(right)) + 1)]
    _log2_ticks(ax, powers[::2] if len(powers) > 14 else powers)  # more would crowd the labels
    ax.set_xlim(left, right)
    _mark_candidates(ax, lengths, shown)
    ax.set_xlabel("tokens per row")
    ax.set_ylabel("rows")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    return figure


def _mark_candidates(ax: Any, lengths: list[int], candidates: list[int]) -> None:
    """A dotted line at each candidate, and the share of rows longer than it on a top axis above
    the line: there, unlike beside the line, no bar can hide it."""
    from matplotlib.ticker import NullLocator

    if not candidates:
        return
    for candidate in candidates:
        ax.axvline(candidate, color="0.3", linestyle=":")
    top = ax.secondary_xaxis("top")
    shares = [sum(length > c for length in lengths) / len(lengths) for c in candidates]
    top.set_xticks(candidates, [f"{share:.1%}" for share in shares], fontsize="small")
    top.xaxis.set_minor_locator(NullLocator())
    top.set_xlabel("rows longer than the candidate max_seq_length (dotted)", fontsize="small")


def _candidates_in_view(candidates: list[int], low: int, high: int) -> list[int]:
    """The candidates from the last one below the shortest row to the first that holds the longest:
    those past either end say only 0% or 100% and would stretch the axis."""
    below = [c for c in candidates if c < low]
    above = [c for c in candidates if c >= high]
    first = candidates.index(below[-1]) if below else 0
    last = candidates.index(above[0]) if above else len(candidates) - 1
    return candidates[first:last + 1]


def _log2_ticks(ax: Any, values: list[int]) -> None:
    """Label a log x axis at the given values, as 1,024 rather than 2^10, and nowhere else."""
    from matplotlib.ticker import NullLocator

    ticks = sorted(set(values))
    ax.set_xticks(ticks, [f"{int(t):,}" for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
