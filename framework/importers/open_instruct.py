"""`seqtune import open-instruct`: an open-instruct training command as a seqtune recipe.

Every flag of `open_instruct/finetune.py`, `dpo_tune_cache.py` and `dpo_tune.py`, and the
`accelerate launch` flags in front, is one of: mapped to a recipe key (the key's comment names the
flag), ignored by open-instruct itself, or without a seqtune equivalent. The last two are listed in a
warning block at the top of the recipe and on the console; a flag that is none of these is an error,
so nothing is dropped silently. Flag meanings are open-instruct's at the Tulu 3 release (its
FlatArguments), where a boolean is `--flag`, `--flag true` or `--flag false`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from framework.errors import UserError, did_you_mean
from framework.importers.commands import Command
from framework.importers.flags import ACCELERATE, COMMON, DPO, NEGATABLE, Draft, as_bool, as_number
from framework.importers.render import render

__all__ = ["SCRIPTS", "read", "render"]

SCRIPTS = ("finetune.py", "dpo_tune_cache.py", "dpo_tune.py")


# open-instruct's own defaults where they differ from seqtune's: a flag left out means these
DEFAULTS = {"seed": 42, "train.epochs": 2, "train.per_device_batch_size": 8, "optimizer.lr": 2.0e-5,
            "optimizer.weight_decay": 0.0, "optimizer.fused": True, "scheduler.name": "linear",
            "scheduler.warmup_ratio": 0.03, "model.attn_implementation": "flash_attention_2"}
DPO_LOSSES = {"dpo": "sigmoid", "dpo_norm": "dpo_norm", "simpo": "simpo"}


def read(command: Command) -> Draft:
    """Every flag through its handler; unknown flags are one error listing them all."""
    dpo = command.script.endswith(("dpo_tune_cache.py", "dpo_tune.py"))
    tables = [(ACCELERATE, command.launcher), ({**COMMON, **(DPO if dpo else {})}, command.flags)]
    draft, unknown = Draft(), []
    for table, flags in tables:
        for name, values in flags:
            name, values = _spelled(name, values, table, draft)
            handler = table.get(name)
            if handler is None:
                tool = "accelerate launch" if table is ACCELERATE else Path(command.script).name
                unknown.append(f"--{name}: not a flag of {tool}" + did_you_mean(name, table))
                continue
            handler(draft, values, f"--{name}")
    if unknown:
        raise UserError(unknown)
    assemble(draft, command, dpo)
    return draft


def _spelled(name: str, values: list[str], table: dict, draft: Draft) -> tuple[str, list[str]]:
    """The flag as open-instruct's parser reads it: `--no_<flag>` is false for a flag that defaults to
    true, and a unique prefix is the flag it starts (`--model_name` is `--model_name_or_path`)."""
    if table is ACCELERATE or name in table:
        return name, values
    if name.startswith("no_") and name[3:] in NEGATABLE:
        return name[3:], ["false"]
    matches = [flag for flag in table if flag.startswith(name)]
    if len(matches) == 1:
        draft.warnings.append(f"--{name}: read as --{matches[0]}, as open-instruct's parser reads a unique prefix")
        return matches[0], values
    return name, values


def assemble(draft: Draft, command: Command, dpo: bool) -> None:
    """What needs several flags, or open-instruct's defaults, or the script itself."""
    values = draft.values
    if "run_name" not in values:
        draft.set("run_name", Path(command.script).stem, "open-instruct's default --exp_name: the script's name")
    if "output_dir" not in values:
        draft.set("output_dir", f"output/{values['run_name']}", "open-instruct's default output/, one folder per run")
    for key, value in DEFAULTS.items():
        if key not in values:
            draft.set(key, value, "open-instruct's default")
    if "optimizer.lr" in values:
        draft.set("optimizer.name", "adamw", "open-instruct's AdamW")
    if "model.name_or_path" in values and "tokenizer.name_or_path" not in values:
        draft.set("tokenizer.name_or_path", values["model.name_or_path"],
                  "--model_name_or_path (the default tokenizer)")
    _fused(draft)
    _splits(draft)
    _loggers(draft)
    _lora(draft)
    _launch(draft, command)
    if dpo:
        _dpo(draft, command)
    if "data.max_seq_length" not in values:
        draft.warnings.append("no --max_seq_length: open-instruct then keeps rows whole; written as seqtune's 2048")
    for key in [k for k in values if k.startswith("raw.")]:
        del values[key]


def _raw(draft: Draft, name: str, default: Any = None) -> Any:
    return draft.values.get(f"raw.{name}", default)


def _fused(draft: Draft) -> None:
    fused = _raw(draft, "fused_optimizer")
    if fused is not None:
        draft.set("optimizer.fused", as_bool(fused, "--fused_optimizer"), "--fused_optimizer")
    if _raw(draft, "use_fast") is not None:
        draft.set("tokenizer.use_fast", as_bool(_raw(draft, "use_fast"), "--use_fast"), "--use_fast")


def _splits(draft: Draft) -> None:
    splits = _raw(draft, "dataset_mixer_list_splits")
    entries = draft.values.get("data.mixture", [])
    if splits and entries:
        if len(splits) not in (1, len(entries)):
            raise UserError(f"--dataset_mixer_list_splits: {len(splits)} splits for {len(entries)} datasets")
        for entry, split in zip(entries, splits * len(entries) if len(splits) == 1 else splits):
            if split != "train":
                entry["split"] = split


def _loggers(draft: Draft) -> None:
    tracking = _raw(draft, "with_tracking") is not None and as_bool(_raw(draft, "with_tracking"), "--with_tracking")
    report = _raw(draft, "report_to")
    loggers: list[Any] = ["rich", "jsonl"]
    if report is not None and not tracking:
        draft.warnings.append("--report_to: ignored by open-instruct itself without --with_tracking")
    if tracking:
        wanted = report or ["all"]
        options = {k: v[0] for k, v in (("project", _raw(draft, "wandb_project_name")),
                                        ("entity", _raw(draft, "wandb_entity"))) if v}
        if any(name in ("wandb", "all") for name in wanted):
            loggers.append({"name": "wandb", **options} if options else "wandb")
        if any(name in ("tensorboard", "all") for name in wanted):
            loggers.append("tensorboard")
        for name in wanted:
            if name not in ("wandb", "tensorboard", "all"):
                draft.warnings.append(f"--report_to {name}: no {name} logger is built in (a logger plugin can add one)")
        reported = f" --report_to {' '.join(report)}" if report else ""
        draft.set("logging.loggers", loggers, f"--with_tracking{reported}")


def _lora(draft: Draft) -> None:
    use, qlora = _raw(draft, "use_lora"), _raw(draft, "use_qlora")
    qlora = qlora is not None and as_bool(qlora, "--use_qlora")
    if not qlora and (use is None or not as_bool(use, "--use_lora")):  # a 4-bit base trains only through LoRA
        return
    lora = {"r": int(as_number(_raw(draft, "lora_rank", ["64"])[0], "--lora_rank")),
            "alpha": float(as_number(_raw(draft, "lora_alpha", ["16"])[0], "--lora_alpha")),
            "dropout": float(as_number(_raw(draft, "lora_dropout", ["0.1"])[0], "--lora_dropout"))}
    draft.set("lora", lora, "--use_lora --lora_rank --lora_alpha --lora_dropout (open-instruct's defaults where "
                            "not given; all linear layers)")
    if qlora:  # finetune.py's BitsAndBytesConfig, as it writes it
        draft.set("model.quantization", {"method": "nf4", "double_quant": True, "compute_dtype": "bfloat16"},
                  "--use_qlora (open-instruct's 4-bit base: NF4, double quantization, bf16 compute)")


def _launch(draft: Draft, command: Command) -> None:
    if not command.launcher:
        draft.warnings.append("no `accelerate launch` in front: one process")
    use = _raw(draft, "use_deepspeed")
    if use is not None and as_bool(use, "--use_deepspeed") and "launch.deepspeed" not in draft.values:
        draft.set("launch.deepspeed", {"zero_stage": 2}, "--use_deepspeed (no config file: seqtune's ZeRO-2)")
    if "launch.deepspeed" in draft.values and "train.clip_grad_norm" not in draft.values:
        # open-instruct's DeepSpeed configs say gradient_clipping "auto", which accelerate fills with 1.0
        draft.set("train.clip_grad_norm", 1.0, "no --clip_grad_norm: DeepSpeed's \"auto\" clipping, 1.0")


def _dpo(draft: Draft, command: Command) -> None:
    kind = (_raw(draft, "dpo_loss_type") or ["dpo"])[0]
    if kind not in DPO_LOSSES:
        raise UserError(f"--dpo_loss_type {kind}: seqtune's dpo objective has {', '.join(DPO_LOSSES)} (as sigmoid, "
                        "dpo_norm, simpo), not this one")
    beta = float(as_number((_raw(draft, "dpo_beta") or ["0.1"])[0], "--dpo_beta"))
    objective: dict[str, Any] = {"name": "dpo", "loss": DPO_LOSSES[kind], "beta": beta}
    smoothing = _raw(draft, "dpo_label_smoothing")
    if smoothing and float(as_number(smoothing[0], "--dpo_label_smoothing")):
        objective["label_smoothing"] = float(as_number(smoothing[0], "--dpo_label_smoothing"))
    ratio = _raw(draft, "dpo_gamma_beta_ratio")
    if kind == "simpo":
        objective["gamma"] = beta * float(as_number((ratio or ["0.3"])[0], "--dpo_gamma_beta_ratio"))
    elif ratio:
        draft.warnings.append("--dpo_gamma_beta_ratio: ignored by open-instruct itself (SimPO only)")
    if not kind == "simpo":
        objective["reference"] = "cached" if command.script.endswith("dpo_tune_cache.py") else "live"
    draft.set("objective", objective, f"{Path(command.script).name} --dpo_loss_type {kind} --dpo_beta {beta:g}")
    for entry in draft.values.get("data.mixture", []):
        entry["format"] = "preference"
    draft.set("data.train_on", "assistant", "open-instruct's preference tokenization trains every assistant turn")
    if "train.loss_reduction" in draft.comments and draft.comments["train.loss_reduction"].startswith("--reduce_loss"):
        draft.warnings.append("--reduce_loss: ignored by open-instruct's DPO scripts (they average over pairs)")
    draft.set("train.loss_reduction", "mean", "the DPO scripts' losses.mean() per micro-batch")
    forward = _raw(draft, "concatenated_forward")
    if forward is not None and not as_bool(forward, "--concatenated_forward"):
        draft.warnings.append("--concatenated_forward false: seqtune runs both sides in one forward (same numbers)")


