"""Counting, on the CPU, the operations that make the host wait for a CUDA GPU.

On a GPU, `.item()`, `float()`/`int()`/`bool()` of a tensor, `nonzero`, boolean-mask indexing,
`masked_select`, `unique`, `repeat_interleave` without `output_size`, a copy to the host (`tolist`,
`cpu`, `numpy`) and a tensor made from Python data (a pageable copy to the device) each stall the CPU
until the GPU has caught up. The same calls run on the CPU, where a `TorchDispatchMode` sees the
dispatched ones and wrapped `Tensor` methods the copies that are no-ops here. Each is attributed by
the Python stack: to the model's own forward (any transformers frame), to seqtune's code (the
innermost frame is in framework/ or plugins/), or to the library whose frame is innermost.

The mode is thread-local: host-side work in another thread (the prefetched collate) is not seen.
"""
from __future__ import annotations

import contextlib
import sys
import threading
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parent.parent
SEQTUNE = (str(REPO / "framework") + "/", str(REPO / "plugins") + "/")
WAITING_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2",
               "unique_consecutive", "unique_dim", "lift_fresh"}
COPIES_TO_HOST = ("tolist", "cpu", "numpy")
# torch's own wrappers between a call and its dispatch: never the caller
PLUMBING = ("_python_dispatch.py", "host_waits.py", "torch/_dynamo/", "torch/_compile.py", "torch/_tensor.py",
            "torch/overrides.py", "torch/utils/_device.py")


def _is_waiting(func, args, kwargs) -> bool:
    name = func.__name__.split(".")[0]
    if name in WAITING_OPS:
        return True
    if name in ("index", "index_put", "index_put_"):  # boolean masks become nonzero on the device
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(i is not None and i.dtype == torch.bool for i in indices)
    if name == "repeat_interleave":  # the output's size is read back unless it is given
        return kwargs.get("output_size") is None and not (len(args) > 3 and args[3] is not None) \
            and isinstance(args[0], torch.Tensor) and len(args) > 1 and isinstance(args[1], torch.Tensor)
    return False


def _owner() -> str:
    """Who issued the call being dispatched: model, seqtune, or the innermost library."""
    frame, innermost = sys._getframe(2), None
    while frame is not None:
        path = frame.f_code.co_filename
        if "/transformers/" in path:
            return "model"
        if innermost is None and not any(part in path for part in PLUMBING):
            innermost = path
        frame = frame.f_back
    if innermost is None:
        return "other"
    if innermost.startswith(SEQTUNE):
        return "seqtune"
    parts = Path(innermost).parts
    return parts[parts.index("site-packages") + 1] if "site-packages" in parts else "other"


class HostWaits(TorchDispatchMode):
    """Counts host waits by owner; `where` keeps (owner, op, innermost seqtune line) for reading."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()
        self.where: Counter = Counter()

    def note(self, op: str) -> None:
        owner = _owner()
        self.counts[owner] += 1
        self.where[(owner, op, _seqtune_line())] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_waiting(func, args, kwargs):
            self.note(func.__name__)
        return func(*args, **kwargs)

    def snapshot(self) -> Counter:
        return Counter(self.counts)


def _seqtune_line() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(SEQTUNE):
            return f"{Path(frame.f_code.co_filename).relative_to(REPO)}:{frame.f_lineno}"
        frame = frame.f_back
    return ""


@contextlib.contextmanager
def counting():
    """A HostWaits mode on this thread, with the host copies that are no-ops on the CPU counted too."""
    mode, thread = HostWaits(), threading.get_ident()
    originals = {name: getattr(torch.Tensor, name) for name in COPIES_TO_HOST}

    def wrap(name):
        def counted(self, *args, **kwargs):
            if threading.get_ident() == thread:
                mode.note(name)
            return originals[name](self, *args, **kwargs)

        return counted

    for name in COPIES_TO_HOST:
        setattr(torch.Tensor, name, wrap(name))
    try:
        with mode:
            yield mode
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


# -- as a plugin: `plugins=[host_waits]` records the counts at the end of every optimizer step ----------

from framework import hookimpl  # noqa: E402

ACTIVE: list = []  # the counting mode of the run in progress
STEP_ENDS: list[Counter] = []  # its counts at the end of each step


@hookimpl
def seqtune_step_end(step: int) -> None:
    if ACTIVE:
        STEP_ENDS.append(ACTIVE[-1].snapshot())


@contextlib.contextmanager
def per_step():
    """Count a run's host waits; yields the list of each whole step's counts once the run is over (the
    first step, with its warm-ups, and the last, which logs, left out)."""
    steps: list[Counter] = []
    STEP_ENDS.clear()
    with counting() as mode:
        ACTIVE.append(mode)
        try:
            yield steps
        finally:
            ACTIVE.pop()
    steps += [after - before for before, after in zip(STEP_ENDS[:-2], STEP_ENDS[1:-1])]
