"""Checkpoints that are complete or invisible, and resume that continues at the exact micro-batch.

A checkpoint is a Hugging Face model directory (loadable on its own) plus what resuming needs:
optimizer state (DeepSpeed's own sharded checkpoint under ZeRO), scheduler state, every rank's RNG
state, and `trainer_state.json` (step, the next micro-batch, running totals, and the identity of the
run it belongs to). It is written under `.partial-step-N`, `trainer_state.json` last (the completion
marker), and renamed to `step-N`; it is deleted by renaming it to `.deleting-step-N` first. A kill at
any moment leaves either a complete `step-N` or a hidden folder, which the next save clears.

Every file seqtune itself reads back loads with `weights_only=True`: a checkpoint is data, never code.
"""
from __future__ import annotations

import json
import random
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from framework.errors import UserError
from framework.launch.accelerator import is_deepspeed
from framework.training.outputs import warn
from framework.training.ownership import differing

STATE = "trainer_state.json"
HIDDEN = (".partial-", ".deleting-")
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
           "pytorch_model.bin")


@dataclass
class TrainerState:
    step: int = 0
    epoch: int = 0  # epoch of the next micro-batch
    micro_batch: int = 0  # index of the next micro-batch in that epoch's list for this rank
    totals: dict[str, float] = field(default_factory=dict)
    fingerprint: str = ""  # the run's identity and its batch plan: what must match to continue
    identity: dict[str, str] = field(default_factory=dict)  # per component, to say what differs
    best: dict[str, float] = field(default_factory=dict)  # the best evaluation so far (framework.training.best)

    def advance(self, epoch: int, next_micro_batch: int, epoch_length: int) -> None:
        """After an optimizer step: where a resume would continue."""
        self.step += 1
        self.epoch, self.micro_batch = (epoch + 1, 0) if next_micro_batch >= epoch_length else (epoch, next_micro_batch)


@dataclass
class Saved:
    """A checkpoint read from disk and checked, not yet applied to the run."""

    path: Path
    state: TrainerState
    optimizer: Optional[dict]  # None under DeepSpeed, which loads its own
    scheduler: dict
    rng: Optional[dict]
    rollout: Optional[dict] = None  # this rank's generation its next steps still train on (online objectives)


def checkpoints_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def find_resume(resume: str, output_dir: Path, deepspeed: bool = False) -> Path | None:
    """The checkpoint to resume from: `auto` (the newest complete one, if any), `never`, or a path.
    `auto` skips, with a warning, a marked checkpoint that lacks files (one left by an older
    seqtune's unsafe deletion, or edited by hand)."""
    if resume == "never":
        return None
    if resume != "auto":
        path = Path(resume)
        if not (path / STATE).is_file():
            raise UserError(f"checkpoint.resume: '{resume}' is not a complete seqtune checkpoint "
                            f"(no {STATE}); use auto, never or a checkpoints/step-N folder")
        missing = _missing(path, deepspeed)
        if missing:
            raise UserError(f"checkpoint.resume: '{resume}' is incomplete (no {', '.join(missing)}); "
                            "use auto, never or another checkpoints/step-N folder")
        return path
    for path in sorted(checkpoints_dir(output_dir).glob("step-*"), reverse=True):
        if not (path / STATE).is_file():
            continue
        missing = _missing(path, deepspeed)
        if not missing:
            return path
        warn(f"skipping checkpoint {path}: it is incomplete (no {', '.join(missing)})")
    return None


def _missing(path: Path, deepspeed: bool) -> list[str]:
    """What a marked checkpoint lacks for a resume (rank 0's RNG state stands for every rank's)."""
    needed = ["scheduler.pt", "rng_rank0.pt", "deepspeed" if deepspeed else "optimizer.pt"]
    missing = [name for name in needed if not (path / name).exists()]
    if not any((path / name).is_file() for name in ("config.json", "adapter_config.json")):
        missing.insert(0, "config.json")
    if not any((path / name).is_file() for name in WEIGHTS):
        missing.insert(0, "model weights")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, AttributeError):
            shards = {index.name}
        missing[:0] = sorted(shard for shard in shards if not (path / shard).is_file())
    return missing


def model_weights(accelerator: Any, model: Any) -> Optional[dict]:
    """The whole model's weights for the main process to save; None on the others. Every rank calls it:
    ZeRO-3 gathers its shards here (a collective). Otherwise the main process holds every weight itself
    and reads them where they are; nothing is cloned (accelerate's get_state_dict copies the whole model
    to host memory on every rank under ZeRO-1/2)."""
    if is_zero3(accelerator):
        return accelerator.get_state_dict(model)
    return accelerator.unwrap_model(model).state_dict() if accelerator.is_main_process else None


def is_zero3(accelerator: Any) -> bool:
    return is_deepspeed(accelerator) and accelerator.state.deepspeed_plugin.zero_stage == 3


def save(accelerator: Any, model: Any, optimizer: Any, scheduler: Any, tokenizer: Any, output_dir: Path,
         state: TrainerState, keep_last: int | None, rollout: dict | None = None) -> Path:
    """Every rank calls this; the main process writes the shared parts and renames when complete.
    `rollout`: this rank's generation that the next steps still train on (framework.training.rollout)."""
    import torch

    root = checkpoints_dir(output_dir)
    final, partial = root / f"step-{state.step:08d}", root / f".partial-step-{state.step:08d}"
    weights = model_weights(accelerator, model)
    if accelerator.is_main_process:
        _clear_hidden(root)  # what a kill left: unfinished saves and deletions
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
    if rollout is not None:
        torch.save(rollout, partial / f"rollout_rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / STATE).write_text(json.dumps(asdict(state), indent=2))  # last: marks it complete
        if final.exists():  # a run started over (resume=never) saves this step again
            delete_folder(final)
        partial.rename(final)
        if keep_last:
            for old in sorted(root.glob("step-*"))[:-keep_last]:
                delete_folder(old)
    accelerator.wait_for_everyone()
    return final


def delete_folder(path: Path) -> None:
    """Hide a checkpoint (or output_dir/best) with one atomic rename before removing it, so that a kill
    mid-way never leaves a `step-N` with its marker but without its weights; the next save clears the rest."""
    hidden = path.with_name(f".deleting-{path.name}")
    shutil.rmtree(hidden, ignore_errors=True)
    path.rename(hidden)
    (hidden / STATE).unlink(missing_ok=True)  # the marker goes first
    shutil.rmtree(hidden)


def _clear_hidden(root: Path) -> None:
    for leftover in sorted(root.glob(".*")):
        if leftover.name.startswith(HIDDEN):
            shutil.rmtree(leftover, ignore_errors=True)


def read(path: Path, expected: TrainerState, deepspeed: bool, rank: int) -> Saved:
    """Read and check a checkpoint before anything is written: another run's checkpoint, or a
    file that is not plain tensors and numbers, stops the run with one line."""
    try:
        state = TrainerState(**json.loads((path / STATE).read_text()))
    except (ValueError, TypeError) as exc:
        raise UserError(f"checkpoint.resume: {path / STATE} cannot be read ({exc}); resume from another "
                        "checkpoint (checkpoint.resume=<path>) or use checkpoint.resume=never") from None
    if state.fingerprint != expected.fingerprint:
        differ = differing(state.identity, expected.identity) if state.identity else []
        verb = "differs" if len(differ) == 1 else "differ"
        made_with = (f"belongs to another run ({', '.join(differ)} {verb})" if differ
                     else "was made with other data, batch or launch settings")
        raise UserError(f"checkpoint.resume: {path} {made_with}, so it cannot continue this run exactly; "
                        "use checkpoint.resume=never to start over")
    rng, rollout = path / f"rng_rank{rank}.pt", path / f"rollout_rank{rank}.pt"
    optimizer = None if deepspeed else _load(path / "optimizer.pt")
    return Saved(path, state, optimizer, _load(path / "scheduler.pt"), _load(rng) if rng.is_file() else None,
                 _load(rollout) if rollout.is_file() else None)


def restore(saved: Saved, accelerator: Any, optimizer: Any, scheduler: Any) -> TrainerState:
    """Apply a checkpoint read by `read` (the weights were loaded with the model)."""
    if is_deepspeed(accelerator):
        accelerator.load_state(str(saved.path / "deepspeed"))  # DeepSpeed reads its own files
    else:
        optimizer.load_state_dict(saved.optimizer)
    scheduler.load_state_dict(saved.scheduler)
    if saved.rng is not None:
        _set_rng_state(saved.rng)
    return saved.state


def _load(path: Path) -> Any:
    """torch.load that runs no code: anything but tensors and plain values is refused."""
    import pickle

    import torch

    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol it then refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"checkpoint.resume: {path} is not a plain tensor file (weights_only load refused "
                        f"it): {_reason(exc)}; it may not be a seqtune checkpoint, or it was tampered with"
                        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise UserError(f"checkpoint.resume: {path} cannot be read ({_reason(exc)}); the checkpoint is "
                        "damaged: resume from another one (checkpoint.resume=<path>) or use "
                        "checkpoint.resume=never") from None


def _reason(exc: Exception) -> str:
    """The sentence of torch's long message that says what was refused (or what failed)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    refused = [line for line in lines if "Unsupported" in line or line.startswith("Trying to load")]
    line = (refused or lines or [type(exc).__name__])[0].split("WeightsUnpickler error:")[-1].strip()
    return line.split(". ")[0].rstrip(".")


def _rng_state() -> dict[str, Any]:
    """Every generator's state as tensors, ints, floats and lists, so it loads with weights_only."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
