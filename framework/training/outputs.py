"""What the engine writes besides checkpoints: the final model and the run's record, and messages."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from framework.config import LoadedRecipe


def say(message: str) -> None:
    """A progress message for the user, on stderr so that stdout stays machine-readable; in a
    multi-process run only the main process speaks. One line in a log file (grep finds it whole);
    wrapped at words in a terminal, where the terminal would cut words at its edge."""
    from framework.data.progress import stderr_console

    if int(os.environ.get("RANK", "0")) != 0:
        return
    console = stderr_console()
    console.print(message, highlight=False, soft_wrap=not console.is_terminal)


def warn(message: str) -> None:
    """A one-line warning: the run goes on, but the user should know."""
    from rich.markup import escape

    say(f"[yellow]warning[/]: {escape(message)}")


def save_final(model: Any, tokenizer: Any, loaded: LoadedRecipe, report: Any, output_dir: Path,
               state_dict: dict | None = None) -> None:
    """A Hugging Face checkpoint (safetensors, config, tokenizer with its chat template) plus the
    resolved recipe and the truncation report, so the run can be read and repeated."""
    model.save_pretrained(output_dir, state_dict=state_dict)
    tokenizer.save_pretrained(output_dir)
    (output_dir / "recipe.yaml").write_text(OmegaConf.to_yaml(loaded.data))
    (output_dir / "truncation_report.json").write_text(json.dumps(vars(report), indent=2))


def write_artefacts(run: Any, summary: dict, folders: list[Path]) -> None:
    """The loss curve (when matplotlib is installed) and a model card in each saved model folder."""
    from framework.errors import UserError
    from framework.report.card import write_card
    from framework.report.plots import loss_curve
    from framework.report.run import BEST, METRICS, history, kept, read_run

    output_dir, recipe = run.output_dir, run.loaded.recipe
    # metrics.jsonl holds a resumed run's whole record; without the jsonl logger, this process's
    records = history(read_run(output_dir)) if (output_dir / METRICS).is_file() else run.history
    curve = None
    try:
        curve = loss_curve(records, output_dir / "loss_curve.png", f"{recipe.run_name}: loss").name
    except UserError as exc:
        warn(f"no loss curve: {exc.problems[0]}")
    facts = _facts(run, summary, curve)
    for folder in folders:
        if folder != output_dir and curve:
            (folder / curve).write_bytes((output_dir / curve).read_bytes())
        write_card(folder, dataclasses.replace(facts, merged=folder.name == "merged",
                                               best=kept(output_dir) if folder.name == BEST else None))


def _facts(run: Any, summary: dict, curve: str | None) -> Any:
    """What the model card says, every path in it usable from anywhere on this machine."""
    from framework.report.card import CardFacts, base_license

    recipe, output_dir = run.loaded.recipe, run.output_dir
    base = recipe.model.name_or_path
    local = base and Path(base).expanduser().exists()  # said as the adapter's config records it (apply_lora)
    return CardFacts(run_name=recipe.run_name, base_model=str(Path(base).expanduser().resolve()) if local else base,
                     base_license=base_license(base), datasets=[entry.source for entry in recipe.data.mixture],
                     objective=recipe.objective.name, lora=recipe.lora is not None,
                     recipe_yaml=OmegaConf.to_yaml(run.loaded.data), data=vars(run.prep.data.report),
                     hyperparameters=_hyperparameters(run), results=summary, hardware=_hardware(run.accelerator),
                     loss_curve=curve, seqtune_version=_version(), trained_rows=len(run.prep.data.dataset),
                     evaluation=_evaluation(run), started_in=str(Path.cwd()),
                     recipe_path=str((output_dir / "recipe.yaml").resolve()),
                     reproduce_overrides=[f"output_dir={str(recipe.output_dir).rstrip('/')}-again"])


def _evaluation(run: Any) -> dict | None:
    """The held-out evaluation as the card tells it: how many rows, and whence."""
    evaluation, config = run.evaluation, run.loaded.recipe.eval
    if evaluation is None or config is None:
        return None
    return {"rows": len(evaluation.data.dataset), "split": config.split is not None,
            "sources": [entry.source for entry in config.mixture or []]}


def _hyperparameters(run: Any) -> dict[str, object]:
    recipe = run.loaded.recipe
    train, launch = recipe.train, recipe.launch
    batch = train.per_device_batch_size * train.gradient_accumulation_steps * run.accelerator.num_processes
    found = {"objective": recipe.objective.name, **recipe.objective.options,
             "learning_rate": recipe.optimizer.options.get("lr"), "optimizer": recipe.optimizer.name, "scheduler": recipe.scheduler.name, "effective_batch": batch,
             "steps": run.state.step, "max_seq_length": recipe.data.max_seq_length, "packing": recipe.data.packing.name,
             "loss_reduction": train.loss_reduction, "precision": launch.mixed_precision,
             "deepspeed_stage": launch.deepspeed.zero_stage if launch.deepspeed else None,
             "lora_rank": recipe.lora.r if recipe.lora else None, "seed": recipe.seed}
    return {key: value for key, value in found.items() if value is not None}


def _hardware(accelerator: Any) -> str:
    import torch

    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    unit = "process" if device.type != "cuda" else "x"
    return f"{accelerator.num_processes} {unit} {name}" if device.type == "cuda" else \
        f"{accelerator.num_processes} CPU {unit}{'es' if accelerator.num_processes > 1 else ''}"


def _version() -> str:
    from framework import __version__

    return __version__
