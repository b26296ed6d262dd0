"""Training metrics between two logging steps, summed over every rank, and the device's peaks."""
from __future__ import annotations

import math
import resource
import sys
import time
from typing import Any

from framework.estimation.hardware import FlopsShape, gpu_from_device_name, mfu, model_flops


MAX = "_max"  # the suffix of an objective's metric the window keeps the largest of, not the sum

class Window:
    """Token and loss tallies between two logging steps, and the run's totals: tokens and the seconds
    spent training, over every session of a resumed run (a checkpoint saves `totals`)."""

    def __init__(self, totals: dict[str, float] | None = None, shape: FlopsShape = FlopsShape(0),
                 peak_tflops: float | None = None):
        self._totals = {"tokens": 0, "trainable_tokens": 0, "train_seconds": 0.0, **(totals or {})}
        self._session_started = time.perf_counter()
        self.shape, self.peak_tflops = shape, peak_tflops
        self.last_loss = math.nan
        self.last_objective: dict[str, float] = {}
        self._reset()

    @property
    def totals(self) -> dict[str, float]:
        """Tokens so far, and train_seconds: the earlier sessions' (up to their last checkpoint: work
        redone after a resume counts once) plus this session's so far."""
        seconds = self._totals["train_seconds"] + time.perf_counter() - self._session_started
        return {**self._totals, "train_seconds": round(seconds, 2)}

    def _reset(self) -> None:
        self.loss_sum, self.tokens, self.slots, self.trainable, self.pairs, self.units = 0.0, 0, 0, 0, 0, 0
        self.objective: dict[str, Any] = {}  # the objective's metric sums (DPO's rewards), on the device
        self.timings: dict[str, list[float]] = {}  # phase -> seconds of each step (GRPO's generation)
        self.started = time.perf_counter()

    def count(self, batch: Any, loss_sum: Any, metrics: dict[str, Any] | None = None) -> None:
        """A micro-batch's counts (Python ints from the CPU side), its summed loss and the objective's
        metric sums (on the device)."""
        import torch

        self.tokens += batch.tokens
        self.slots += batch.slots
        self.trainable += batch.trainable
        self.pairs += batch.attention_pairs
        self.units += batch.units
        self.loss_sum += loss_sum
        for key, value in (metrics or {}).items():
            old = self.objective.get(key)
            # a metric named *_max is the window's largest (GRPO's longest completion), others are sums
            # torch.maximum, not max(): comparing device tensors in Python would make the host wait
            self.objective[key] = value if old is None else (
                torch.maximum(torch.as_tensor(old), torch.as_tensor(value)) if key.endswith(MAX) else old + value)

    def _peaks(self, accelerator: Any) -> dict[str, float]:
        """The *_max metrics, the largest over every rank (one gather, only when the objective has any)."""
        import torch

        names = sorted(name for name in self.objective if name.endswith(MAX))
        if not names:
            return {}
        local = torch.tensor([float(self.objective[name]) for name in names], dtype=torch.float64,
                             device=accelerator.device)
        return dict(zip(names, accelerator.gather(local).view(-1, len(names)).max(0).values.tolist()))

    def timed(self, phase: str, seconds: float) -> None:
        """A phase of a step outside its forward and backward (GRPO's generation), timed on this rank."""
        self.timings.setdefault(phase, []).append(seconds)

    def _times(self, seconds: float) -> dict[str, float]:
        """Seconds per step of each timed phase, and of the learning (the rest of the window)."""
        out = {f"time/{phase}_s": sum(spent) / len(spent) for phase, spent in self.timings.items()}
        if self.timings:
            steps = max(len(spent) for spent in self.timings.values())
            out["time/learning_s"] = (seconds - sum(map(sum, self.timings.values()))) / steps
        return out

    def flush(self, accelerator: Any, lr: float, grad_norm: Any, epoch: float) -> dict[str, float]:
        """This window's metrics summed over all ranks; every rank must call it. The loss and the
        objective's metrics are means over its units (trainable tokens, pairs)."""
        import torch

        names = sorted(name for name in self.objective if not name.endswith(MAX))
        peaks = self._peaks(accelerator)
        local = torch.tensor([float(self.loss_sum), self.tokens, self.trainable, self.slots, self.pairs, self.units,
                              *(float(self.objective[name]) for name in names)],
                             dtype=torch.float64, device=accelerator.device)
        loss_sum, tokens, trainable, slots, pairs, units, *sums = accelerator.reduce(local, "sum").tolist()
        seconds = max(time.perf_counter() - self.started, 1e-9)
        self._totals["tokens"] += int(tokens)
        self._totals["trainable_tokens"] += int(trainable)
        self.last_loss = loss_sum / max(units, 1)
        # the objective's own metrics (DPO's rewards, GRPO's reward and accuracy) of the latest window
        self.last_objective = {**{name: value / max(units, 1) for name, value in zip(names, sums)}, **peaks}
        times = self._times(seconds)
        self._reset()
        metrics = {"loss": self.last_loss, **self.last_objective, "lr": lr, "grad_norm": float(grad_norm), "epoch": round(epoch, 4),
                   "tokens_per_s": tokens / seconds, "trainable_tokens_per_s": trainable / seconds,
                   "padding_fraction": 1 - tokens / max(slots, 1),
                   "peak_memory_gib": peak_memory_gib(accelerator.device), **times}
        utilisation = mfu(model_flops(self.shape, tokens, pairs) / seconds, self.peak_tflops, accelerator.num_processes)
        if utilisation is not None:  # no peak figure for a CPU: no MFU rather than a made-up one
            metrics["mfu"] = utilisation
        return metrics


def peak_tflops(configured: float | None) -> float | None:
    """The recipe's logging.peak_tflops, else the table's figure for this GPU, else None (CPU)."""
    if configured:
        return configured
    import torch

    if not torch.cuda.is_available():
        return None
    gpu = gpu_from_device_name(torch.cuda.get_device_name())
    return gpu.bf16_tflops if gpu else None


def peak_memory_gib(device: Any) -> float:
    """Peak GPU memory allocated by torch on this device, or this process's peak RSS on the CPU."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)
