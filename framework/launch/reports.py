"""What launched workers report to the `seqtune train` that started them, so that a run of several
processes ends as a run of one does: a user's mistake as one error (exit 2), a stop as one line, a crash
with its traceback.

Left alone, every worker prints its own UserError and torchrun adds a ChildFailedError report of some
40 lines (exit 1), and a Ctrl-C prints one "stopped" line per worker among torchrun's warnings. So:
- `run` gives this machine's workers a folder (SEQTUNE_REPORTS; each machine's launcher has its own and
  reports its own workers) and starts the launcher (accelerate's or torchrun, "the agent") in a session
  of its own, so that a terminal's Ctrl-C reaches the agent once, through `run`, not twice;
- a worker writes its UserError or stop there (`to_launcher`) and prints nothing;
- the agent runs inside `main` here, which holds torch elastic's log lines back and drops them, with the
  agent's traceback, when the workers' reports explain the failure (a crash nobody reported shows all);
- `run` raises the reported error, which the CLI prints once.
"""
from __future__ import annotations

import atexit
import importlib
import json
import logging
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from framework.errors import RunStopped, UserError

REPORTS_ENV = "SEQTUNE_REPORTS"
INTERRUPTED = "interrupted by SIGINT; run the same command again to resume from the last checkpoint"
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


# --- the launcher's side -------------------------------------------------------------------------

def run(argv: list[str], env: dict[str, str]) -> int:
    """Run the agent command `argv` and wait for it; raise what its workers reported (a UserError, a
    RunStopped), else return its exit code."""
    with tempfile.TemporaryDirectory(prefix="seqtune-reports-") as folder:
        agent = subprocess.Popen(argv, env={**env, REPORTS_ENV: folder}, start_new_session=True)
        with _forwarding(agent, Path(folder)) as received:
            code = agent.wait()
        if code:
            raise_reported(Path(folder))
            if received:  # stopped before any worker could report (waiting for the other machines, say)
                name = signal.Signals(received[0]).name
                raise RunStopped(f"stopped by {name}; run the same command again to resume from the last "
                                 "checkpoint", exit_code=128 + received[0])
        return code


@contextmanager
def _forwarding(agent: subprocess.Popen, folder: Path) -> Iterator[list[int]]:
    """The first SIGINT/SIGTERM/SIGHUP goes to the agent, which passes it on to the workers and waits for
    them to stop cleanly (a checkpoint, then a report); a later one goes straight to the workers, whose
    second SIGINT stops at once, while the agent goes on waiting for them."""
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        pids = [agent.pid] if not received else [int(p.stem) for p in folder.glob("*.pid")]
        received.append(signum)
        for pid in pids:
            try:
                os.kill(pid, signum)
            except (ProcessLookupError, ValueError):  # gone already, or a stray file
                pass

    try:
        previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    except ValueError:  # not the main thread: signals cannot be caught here, the defaults stay
        previous = {}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def raise_reported(folder: Path) -> None:
    """Raise the workers' reports as one error: every problem once (ranks often report the same one),
    else the first stop."""
    reports = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    problems = list(dict.fromkeys(line for report in reports for line in report.get("problems", [])))
    if problems:
        raise UserError(problems)
    stops = [report for report in reports if "stopped" in report]
    if stops:
        raise RunStopped(stops[0]["stopped"], exit_code=stops[0]["exit_code"])


# --- a worker's side -----------------------------------------------------------------------------

@contextmanager
def to_launcher() -> Iterator[None]:
    """In a launched worker: a UserError or a stop is written for the launcher, which shows it once, and
    the worker exits with its code, printing nothing. Elsewhere: nothing changes."""
    folder = os.environ.get(REPORTS_ENV)
    if not folder or not Path(folder).is_dir():
        yield
        return
    pid = Path(folder) / f"{os.getpid()}.pid"  # where a second Ctrl-C finds this worker
    pid.touch()
    try:
        yield
    except UserError as exc:
        _exit_reported(folder, {"problems": exc.problems}, 2, exc)
    except RunStopped as exc:
        _exit_reported(folder, {"stopped": str(exc), "exit_code": exc.exit_code}, exc.exit_code, exc)
    except KeyboardInterrupt as exc:  # a second Ctrl-C, or one before training started
        _exit_reported(folder, {"stopped": INTERRUPTED, "exit_code": 130}, 130, exc)
    except Exception:
        # Once another rank has reported, this rank's failure follows from that rank leaving (a collective
        # whose peer is gone): the report explains the run's end, a traceback here would only bury it.
        if any(Path(folder).glob("*.json")):
            raise SystemExit(1) from None
        raise
    finally:
        pid.unlink(missing_ok=True)


def _exit_reported(folder: str, report: dict, code: int, exc: BaseException) -> None:
    rank = int(os.environ.get("RANK", os.getpid()))
    path = Path(folder) / f"rank-{rank:06d}.json"
    try:  # whole or absent: the agent may stop this process at any moment once another rank has exited
        path.with_suffix(".tmp").write_text(json.dumps(report))
        path.with_suffix(".tmp").rename(path)
    except OSError:  # the launcher is gone: say it here after all
        raise exc from None
    raise SystemExit(code) from None


# --- the agent's side: `python -m framework.launch.reports MODULE ARGS...` -----------------------

class _Held(logging.Handler):
    """A logger's records, kept until it is known whether they should be shown."""

    def __init__(self, logger: logging.Logger):
        super().__init__()
        self.logger, self.records, self.propagate = logger, [], logger.propagate
        logger.addHandler(self)
        logger.propagate = False

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def end(self, show: bool) -> None:
        self.logger.removeHandler(self)
        self.logger.propagate = self.propagate
        for record in self.records if show else []:
            self.logger.handle(record)


def main(argv: list[str]) -> None:
    """Run the launcher `python -m MODULE ARGS` would run; what torch elastic logs (the workers it
    stops, the one that failed first) and the launcher's ChildFailedError only restate a failure the
    workers reported, so both are dropped when there are reports, and shown when there are none."""
    module, *args = argv
    importlib.import_module("torch.distributed.run")  # torch elastic's loggers and their handlers exist from here

    _first_signal_only()
    _stop_when_orphaned()
    held = _Held(logging.getLogger("torch.distributed.elastic"))
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except BaseException as exc:
        failed = not isinstance(exc, SystemExit) or exc.code not in (0, None)
        folder = os.environ.get(REPORTS_ENV)
        reported = failed and folder is not None and any(Path(folder).glob("*.json"))
        # A Ctrl-C before torch elastic handles signals (while the machines meet): the launcher says so.
        quiet = reported or isinstance(exc, KeyboardInterrupt)
        held.end(show=not quiet)
        if quiet:
            sys.exit(130 if isinstance(exc, KeyboardInterrupt) else 2)  # the launcher reads the reports
        raise
    held.end(show=True)


def _first_signal_only() -> None:
    """torch elastic's handler raises on every signal: a second one (SLURM's SIGTERM reaches every process,
    and `run` forwards its own copy) would break off the agent's wait for its stopping workers."""
    from torch.distributed.elastic.multiprocessing import api

    handler, seen = getattr(api, "_terminate_process_handler", None), []
    if handler is None:  # another torch: its own handling stays
        return

    def first(signum: int, frame: Any) -> None:
        if not seen:
            seen.append(signum)
            handler(signum, frame)

    api._terminate_process_handler = first


def _stop_when_orphaned() -> None:
    """This agent has a session of its own, so `kill -9` of seqtune train (or of its process group)
    leaves it running: when its parent is gone it stops its workers as a SIGTERM would."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        if os.environ.get(REPORTS_ENV):  # nobody reads the reports now, nor removes their folder
            atexit.register(shutil.rmtree, os.environ[REPORTS_ENV], ignore_errors=True)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="seqtune-orphan-watch").start()


if __name__ == "__main__":
    main(sys.argv[1:])
