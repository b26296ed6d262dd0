"""Which run an output_dir belongs to. A run writes only into an empty or missing output_dir, or one
that holds the same run: `output_dir/run.json` (the run's first write) records its identity, a hash
per component of everything that changes the result, so a refusal can say what differs.

Every process checks (read-only, the same answer from the same inputs); only the main process
replaces old contents or writes run.json, after all of them have checked.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from framework.config import LoadedRecipe, display_path
from framework.errors import UserError

RUN_FILE = "run.json"
_TEMP = ".run.json.tmp"  # run.json is written here and renamed, so it is whole or absent
OVERWRITE_HINT = "set overwrite_output_dir=true (or pass --overwrite) to replace"


@dataclass
class Claim:
    """What output_dir holds for this run: nothing (`new`), this run (`same`), or something that
    overwrite_output_dir replaces (`replace`)."""

    output_dir: Path
    kind: str
    identity: dict[str, str]
    keep: Optional[Path] = None  # the preprocessing cache, when it lies inside output_dir
    finished: Optional[int] = None  # steps of a finished run of `same`

    @property
    def replaces(self) -> bool:
        return self.kind == "replace"


MEMORY_SAVERS = ("gradient_checkpointing", "activation_offloading")


def run_identity(loaded: LoadedRecipe, data_key: str, world: int) -> dict[str, str]:
    """A short hash per component of what changes the trained weights. `data_key` names the
    preprocessing cache entry, which already hashes sources, tokenizer, template, lengths,
    truncation, train_on, seed and mixture. Logging, checkpoint cadence, names and paths are not part."""
    recipe = loaded.recipe
    train, launch = recipe.train, recipe.launch
    parts = {
        # The memory savers compute the same numbers: a run may turn them on to resume in less memory
        # (the loss plugin is left out for the same reason: train.loss is not part of "batch").
        "model": {k: v for k, v in asdict(recipe.model).items() if k not in MEMORY_SAVERS},
        "tokenizer": asdict(recipe.tokenizer),
        "data": {"rows": data_key, "packing": asdict(recipe.data.packing),
                 "held_out": recipe.eval.split if recipe.eval is not None else None},
        "optimizer": asdict(recipe.optimizer),
        "scheduler": asdict(recipe.scheduler),
        "batch": {"per_device_batch_size": train.per_device_batch_size, "processes": world,
                  "gradient_accumulation_steps": train.gradient_accumulation_steps, "epochs": train.epochs,
                  "max_steps": train.max_steps, "loss_reduction": train.loss_reduction,
                  "clip_grad_norm": train.clip_grad_norm},
        "seed": recipe.seed,
        "lora": asdict(recipe.lora) if recipe.lora is not None else None,
        "precision": {"mixed_precision": launch.mixed_precision,
                      "deepspeed": asdict(launch.deepspeed) if launch.deepspeed is not None else None},
    }
    return {name: _digest(value) for name, value in parts.items()}


def differing(recorded: dict[str, str], identity: dict[str, str]) -> list[str]:
    """The components whose hashes differ, in the identity's order."""
    names = [*identity, *(name for name in recorded if name not in identity)]
    return [name for name in names if recorded.get(name) != identity.get(name)]


def check_output_dir(loaded: LoadedRecipe, output_dir: Path, identity: dict[str, str], keep: Path
                     ) -> Claim:
    """Read-only: may this run write into output_dir? A UserError names what is in the way."""
    shown = display_path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"output_dir: {shown} is a file, not a folder; use another output_dir")
    keep = keep.resolve()
    claim = Claim(output_dir, "new", identity, keep)
    entries = _entries(output_dir, keep)
    if not entries:
        return claim
    if loaded.recipe.overwrite_output_dir:
        _check_replaceable(loaded, output_dir)
        claim.kind = "replace"
        return claim
    record = _read(output_dir)
    if record is None:
        names = sorted(entry.name for entry in entries)
        listed = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise UserError(f"output_dir {shown} holds files that are not a seqtune run ({listed}); use another "
                        f"output_dir, or {OVERWRITE_HINT} them")
    differ = differing(record.get("identity", {}), identity)
    if differ:
        verb = "differs" if len(differ) == 1 else "differ"
        raise UserError(f"output_dir {shown} holds another run ({', '.join(differ)} {verb}); use another "
                        f"output_dir, or {OVERWRITE_HINT} it")
    claim.kind, claim.finished = "same", record.get("finished")
    return claim


def take_output_dir(claim: Claim) -> None:
    """The run's first write (main process only): clear what overwrite replaces, then record the run."""
    if claim.replaces:
        (claim.output_dir / RUN_FILE).unlink(missing_ok=True)  # first: a half-cleared folder is no run
        for entry in _entries(claim.output_dir, claim.keep):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    claim.output_dir.mkdir(parents=True, exist_ok=True)
    _write(claim.output_dir, {"identity": claim.identity, "finished": None})


def note_total_steps(output_dir: Path, steps: int) -> None:
    """The planned number of optimizer steps, so that `seqtune report` can tell how far a running run is."""
    _write(output_dir, {**(_read(output_dir) or {}), "total_steps": steps})


def mark_finished(output_dir: Path, steps: int) -> None:
    """After the final outputs are written (main process): the same command again has nothing to do."""
    record = _read(output_dir) or {}
    _write(output_dir, {**record, "finished": steps})


def _entries(output_dir: Path, keep: Optional[Path]) -> list[Path]:
    if not output_dir.is_dir():
        return []
    return [entry for entry in output_dir.iterdir() if entry.name != _TEMP
            and not (keep and (entry.resolve() == keep or entry.resolve() in keep.parents))]


def _check_replaceable(loaded: LoadedRecipe, output_dir: Path) -> None:
    """Replacing output_dir must not delete what this run reads, the working directory or home."""
    recipe, resume = loaded.recipe, loaded.recipe.checkpoint.resume
    inputs = {"the working directory": Path.cwd(), "your home folder": Path.home(),
              "the recipe": loaded.path,
              "model.name_or_path": recipe.model.name_or_path,
              "tokenizer.name_or_path": recipe.tokenizer.name_or_path,
              "checkpoint.resume": None if resume in ("auto", "never") else resume,
              **{f"data.mixture[{i}].source": entry.source for i, entry in enumerate(recipe.data.mixture)}}
    root = output_dir.resolve()
    for label, path in inputs.items():
        if path is None or not os.path.exists(path):
            continue
        resolved = Path(path).resolve()
        if resolved == root or root in resolved.parents:
            raise UserError(f"overwrite_output_dir: refusing to replace output_dir {display_path(output_dir)}, "
                            f"which holds {label} ({display_path(path)}); use another output_dir")


def _read(output_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((output_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("identity"), dict) else None


def _write(output_dir: Path, record: dict[str, Any]) -> None:
    temp = output_dir / _TEMP
    temp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(temp, output_dir / RUN_FILE)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
