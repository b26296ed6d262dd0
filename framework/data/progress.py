"""Progress for long data work, in the project's one style (rich, as training's bar): what is done,
how fast, and how long is left; on stderr, and only on the main process of a multi-process run.
Every live display of a process draws on one console (`stderr_console`): a bar started while another
shows (evaluation during training) is drawn beneath it and removed when done.

    with progress_bar("tokenizing", total=len(rows)) as advance:
        for batch in batches:
            ...
            advance(len(batch))

Work spread over processes reports through a shared counter (`Counter`), which the bar polls.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Optional

MIN_SECONDS = 0.5  # a bar appears only for work that lasts longer than this
_console: Optional[Any] = None


def stderr_console() -> Any:
    """The console of this process's live displays (created on first use): on separate consoles, two
    bars would draw over each other's line, and the inner one, once finished, would stay behind."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True)
    return _console


@contextlib.contextmanager
def progress_bar(description: str, total: Optional[float], unit: str = "rows",
                 counter: Optional[Any] = None) -> Iterator[Callable[[float], None]]:
    """A bar for `total` units (None: unknown), advanced by the callable it yields, or read from
    `counter` (a `Counter` that worker processes add to) while the block runs."""
    bar = _started_bar(description, total, unit) if int(os.environ.get("RANK", "0")) == 0 else None
    if bar is None:
        yield lambda n: None
        return
    task, started = bar.task_ids[0], time.perf_counter()

    def advance(n: float) -> None:
        bar.advance(task, n)
        _show_rate(bar, task, started, unit)

    stop = threading.Event()
    poller = threading.Thread(target=_poll, args=(bar, task, counter, stop, started, unit), daemon=True)
    if counter is not None:
        poller.start()
    try:
        yield advance
    finally:
        stop.set()
        if counter is not None:
            poller.join()
            bar.update(task, completed=counter.value)
        bar.stop()


def _started_bar(description: str, total: Optional[float], unit: str) -> Any:
    """A started rich Progress with one task, or None where rich cannot show it (rich < 14 shows one
    live display at a time: the outer one, training's bar, stays)."""
    from rich.errors import LiveError
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    # a fractional unit (MB) as 0.3/1.2 MB, not the 0/1 of whole units
    done = MofNCompleteColumn() if total is None or unit != "MB" else \
        TextColumn("{task.completed:,.1f}/{task.total:,.1f} MB")
    columns = [TextColumn(f"[bold blue]{description}"), BarColumn(bar_width=24), done,
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    console = stderr_console()
    # Inside another display (training's bar) a bar is a passing detail: gone once its work is done.
    # rich (14+) keeps a console's live displays in _live_stack; it has no public way to ask.
    inner = bool(getattr(console, "_live_stack", None))
    bar = Progress(*columns, console=console, transient=inner, disable=False)
    bar.add_task(description, total=total, rate="")
    try:
        bar.start()
    except LiveError:
        return None
    return bar


def _poll(bar: Any, task: Any, counter: Any, stop: threading.Event, started: float, unit: str) -> None:
    while not stop.wait(0.25):
        bar.update(task, completed=counter.value)
        _show_rate(bar, task, started, unit)


def _show_rate(bar: Any, task: Any, started: float, unit: str) -> None:
    seconds = time.perf_counter() - started
    done = bar.tasks[0].completed
    if seconds > MIN_SECONDS and done:
        bar.update(task, rate=f"{done / seconds:,.0f} {unit}/s")


class Counter:
    """A count shared by worker processes (fork), read by the bar."""

    def __init__(self, context: Any):
        self._value = context.Value("q", 0)

    def add(self, n: int) -> None:
        with self._value.get_lock():
            self._value.value += n

    @property
    def value(self) -> int:
        return self._value.value
