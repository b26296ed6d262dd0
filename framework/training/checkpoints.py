"""Checkpoints that are complete or invisible, and resume that continues at the exact micro-batch.

A checkpoint is a Hugging Face model directory (loadable on its own) plus what resuming needs:
optimizer state (DeepSpeed's own sharded checkpoint under ZeRO), scheduler state, every rank's RNG
state, and `trainer_state.json` (step, the next micro-batch, running totals, and a fingerprint of
the data and plan it belongs to). It is written
under `.partial-step-N` and renamed to `step-N` only when every file is there.
"""
from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from framework.errors import UserError
from framework.launch.accelerator import is_deepspeed

STATE = "trainer_state.json"


@dataclass
class TrainerState:
    step: int = 0
    epoch: int = 0  # epoch of the next micro-batch
    micro_batch: int = 0  # index of the next micro-batch in that epoch's list for this rank
    totals: dict[str, float] = field(default_factory=dict)
    fingerprint: str = ""

    def advance(self, epoch: int, next_micro_batch: int, epoch_length: int) -> None:
        """After an optimizer step: where a resume would continue."""
        self.step += 1
        self.epoch, self.micro_batch = (epoch + 1, 0) if next_micro_batch >= epoch_length else (epoch, next_micro_batch)


def checkpoints_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def find_resume(resume: str, output_dir: Path) -> Path | None:
    """The checkpoint to resume from: `auto` (the newest complete one, if any), `never`, or a path."""
    if resume == "never":
        return None
    if resume != "auto":
        path = Path(resume)
        if not (path / STATE).is_file():
            raise UserError(f"checkpoint.resume: '{resume}' is not a complete seqtune checkpoint "
                            f"(no {STATE}); use auto, never or a checkpoints/step-N folder")
        return path
    complete = sorted(p for p in checkpoints_dir(output_dir).glob("step-*") if (p / STATE).is_file())
    return complete[-1] if complete else None


def save(accelerator: Any, model: Any, optimizer: Any, scheduler: Any, tokenizer: Any, output_dir: Path,
         state: TrainerState, keep_last: int | None) -> Path:
    """Every rank calls this; the main process writes the shared parts and renames when complete."""
    import torch

    root = checkpoints_dir(output_dir)
    final, partial = root / f"step-{state.step:08d}", root / f".partial-step-{state.step:08d}"
    weights = accelerator.get_state_dict(model)  # every rank: ZeRO-3 gathers the shards here
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        accelerator.unwrap_model(model).save_pretrained(partial, state_dict=weights)
        tokenizer.save_pretrained(partial)
        if not is_deepspeed(accelerator):
            torch.save(optimizer.state_dict(), partial / "optimizer.pt")
        torch.save(scheduler.state_dict(), partial / "scheduler.pt")
    accelerator.wait_for_everyone()
    if is_deepspeed(accelerator):  # ZeRO shards the optimizer: DeepSpeed writes every rank's part
        accelerator.save_state(str(partial / "deepspeed"))
    torch.save(_rng_state(), partial / f"rng_rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / STATE).write_text(json.dumps(asdict(state), indent=2))  # last: marks it complete
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        if keep_last:
            for old in sorted(root.glob("step-*"))[:-keep_last]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load(path: Path, accelerator: Any, optimizer: Any, scheduler: Any, fingerprint: str) -> TrainerState:
    """Restore optimizer, scheduler and this rank's RNG (the weights were loaded with the model)."""
    import torch

    state = TrainerState(**json.loads((path / STATE).read_text()))
    if state.fingerprint != fingerprint:
        raise UserError(f"checkpoint.resume: {path} was made with other data, batch or launch settings, so "
                        "it cannot continue this run exactly; use checkpoint.resume=never to start over")
    if is_deepspeed(accelerator):
        accelerator.load_state(str(path / "deepspeed"))
    else:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = path / f"rng_rank{accelerator.process_index}.pt"
    if rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=False))
    return state


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
