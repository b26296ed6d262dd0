"""SIGTERM and SIGINT ask the run to stop cleanly: finish the optimizer step, checkpoint, exit."""
from __future__ import annotations

import signal
import threading
from typing import Any


class StopSignals:
    """While active, SIGTERM/SIGINT only set `requested` (the signal number); a second SIGINT
    stops at once, for a user who really means it."""

    def __init__(self):
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers only work there
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
