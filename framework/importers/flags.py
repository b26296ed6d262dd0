"""open-instruct's flags, one handler each: set a recipe key, note a flag open-instruct itself ignores
or one seqtune does not carry over, or keep it for a flag that needs others (`keep`). Flag meanings
are open-instruct's FlatArguments and TokenizerConfig at the Tulu 3 release, where a boolean is
`--flag`, `--flag true` or `--flag false`."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from framework.errors import UserError

@dataclass
class Draft:
    """The recipe being written: values by key path, each with the flags it came from."""

    values: dict[str, Any] = field(default_factory=dict)
    comments: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def set(self, key: str, value: Any, comment: str) -> None:
        self.values[key] = value
        self.comments[key] = comment


Handler = Callable[[Draft, list[str], str], None]  # (draft, the flag's values, "--flag value ...")


def _one(values: list[str], flag: str) -> str:
    if len(values) != 1:
        raise UserError(f"{flag}: takes one value, got {len(values)}")
    return values[0]


def as_bool(values: list[str], flag: str) -> bool:
    if not values:
        return True
    text = _one(values, flag).lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise UserError(f"{flag}: not a boolean ({values[0]}); write true or false")
    return text in ("true", "1", "yes")


def as_number(text: str, flag: str) -> int | float:
    try:
        return int(text) if re.fullmatch(r"-?\d+", text) else float(text)
    except ValueError:
        raise UserError(f"{flag}: not a number ({text})") from None


def to(key: str, kind: Callable[[str, str], Any] = lambda text, flag: text) -> Handler:
    """A flag with one value, set at `key` (converted by `kind(text, flag)`)."""
    def handle(draft: Draft, values: list[str], flag: str) -> None:
        draft.set(key, kind(_one(values, flag), flag), flag)
    return handle


def number(key: str) -> Handler:
    return to(key, as_number)


def switch(key: str, on: Any = True, off: Any = None) -> Handler:
    """A boolean flag: `on` at `key` when it is true; when false, `off` (None: the default stays)."""
    def handle(draft: Draft, values: list[str], flag: str) -> None:
        if as_bool(values, flag):
            draft.set(key, on, flag)
        elif off is not None:
            draft.set(key, off, f"{flag} false")
    return handle


def ignored(reason: str) -> Handler:
    def handle(draft: Draft, values: list[str], flag: str) -> None:
        draft.warnings.append(f"{flag}: ignored by open-instruct itself ({reason})")
    return handle


def unsupported(reason: str) -> Handler:
    def handle(draft: Draft, values: list[str], flag: str) -> None:
        draft.warnings.append(f"{flag}: not carried over: {reason}")
    return handle


def keep(draft: Draft, values: list[str], flag: str) -> None:
    """Read by `assemble` together with the flags it belongs to (--lora_rank with --use_lora, ...)."""
    draft.values[f"raw.{flag[2:]}"] = values


def _mixture(draft: Draft, values: list[str], flag: str) -> None:
    """Pairs `name amount`: open-instruct reads an amount above 1 as that many rows (`1000`, `2.0`) and one
    up to 1 as a share of the rows (`0.5`; `1` and `1.0` are every row)."""
    if not values:
        raise UserError(f"{flag}: needs pairs of dataset and amount")
    if len(values) % 2:
        draft.warnings.append(f"{flag}: {values[-1]} has no amount after it; written as 1.0 (every row)")
        values = [*values, "1.0"]
    entries = []
    for source, amount in zip(values[::2], values[1::2]):
        value = as_number(amount, flag)
        entries.append({"source": source, "count": int(value)} if value > 1 else
                       {"source": source, "fraction": float(value)})
    draft.set("data.mixture", entries, f"{flag} {' '.join(values)}")


def _train_file(draft: Draft, values: list[str], flag: str) -> None:
    """Older scripts' one local file: every row of it."""
    if "data.mixture" in draft.values:
        raise UserError(f"{flag}: give either --train_file or --dataset_mixer_list, as open-instruct requires")
    draft.set("data.mixture", [{"source": _one(values, flag), "fraction": 1.0}], f"{flag} (every row)")


def _checkpointing(draft: Draft, values: list[str], flag: str) -> None:
    value = _one(values, flag)
    draft.set("checkpoint.every", "epoch" if value == "epoch" else as_number(value, flag), flag)


def _clip(draft: Draft, values: list[str], flag: str) -> None:
    value = float(as_number(_one(values, flag), flag))
    draft.set("train.clip_grad_norm", value if value > 0 else None, flag)


def _reduce(draft: Draft, values: list[str], flag: str) -> None:
    value = _one(values, flag)
    if value not in ("mean", "sum"):
        raise UserError(f"{flag} {value}: open-instruct's reduce_loss is mean or sum")
    draft.set("train.loss_reduction", value, f"{flag} {value}")


def _scheduler(draft: Draft, values: list[str], flag: str) -> None:
    value = _one(values, flag)
    nearest = {"linear": "linear", "cosine": "cosine", "constant": "constant", "constant_with_warmup": "constant",
               "cosine_with_restarts": "cosine", "polynomial": "linear"}
    if value not in nearest:
        raise UserError(f"{flag} {value}: not one of open-instruct's schedules ({', '.join(nearest)})")
    if nearest[value] != value:
        draft.warnings.append(f"{flag} {value}: seqtune has no {value} schedule; written as {nearest[value]}")
    draft.set("scheduler.name", nearest[value], flag)


def _deepspeed_file(draft: Draft, values: list[str], flag: str) -> None:
    """open-instruct's configs/ds_configs files by their names (stage2, stage3_no_offloading,
    stage3_offloading, ...); any other file is used as it is."""
    path = _one(values, flag)
    name = Path(path).name
    stage = re.search(r"stage([0-3])", name)
    if stage is None:
        draft.set("launch.deepspeed", {"config_file": path}, f"--use_deepspeed {flag} {path}")
        return
    config: dict[str, Any] = {"zero_stage": int(stage.group(1))}
    if "offloading" in name and "no_offloading" not in name:
        config.update({"offload_optimizer": True, "offload_params": config["zero_stage"] == 3})
    draft.set("launch.deepspeed", config, f"--use_deepspeed {flag} {path}")


def _accelerate_config(draft: Draft, values: list[str], flag: str) -> None:
    """An accelerate config file is not read, but open-instruct's are named for their ZeRO stage."""
    path = _one(values, flag)
    stage = re.search(r"(?:zero|stage)_?([0-3])", Path(path).name)
    if stage is None:
        draft.warnings.append(f"{flag} {path}: not carried over: accelerate config files are not read; set the "
                              "launch keys it holds")
        return
    draft.set("launch.deepspeed", {"zero_stage": int(stage.group(1))}, f"--use_deepspeed {flag} {path}")


NO_HUB = "seqtune never uploads; push the output_dir with huggingface-cli upload"
BEAKER = "Ai2's Beaker cluster only"
COMMON: dict[str, Handler] = {
    "exp_name": to("run_name"), "run_name": ignored("runs are named by --exp_name"), "output_dir": to("output_dir"),
    "seed": number("seed"), "model_name_or_path": to("model.name_or_path"), "model_revision": to("model.revision"),
    "use_flash_attn": switch("model.attn_implementation", "flash_attention_2", "sdpa"),
    "gradient_checkpointing": switch("model.gradient_checkpointing"),
    "trust_remote_code": switch("model.trust_remote_code"),
    "tokenizer_name": ignored("at the Tulu 3 release the tokenizer comes from --tokenizer_name_or_path, else "
                              "the model"),
    "tokenizer_name_or_path": to("tokenizer.name_or_path"),
    "tokenizer_revision": to("tokenizer.revision"), "chat_template_name": to("tokenizer.chat_template"),
    "add_bos": switch("tokenizer.add_bos"), "use_fast": keep,
    "use_slow_tokenizer": ignored("its TokenizerConfig says so: the fast tokenizer is always loaded"),
    "dataset_mixer_list": _mixture, "dataset_mix_dir": to("data.mix_dir"),
    "max_seq_length": number("data.max_seq_length"), "preprocessing_num_workers": number("data.num_workers"),
    "dataset_mixer_list_splits": keep,
    "per_device_train_batch_size": number("train.per_device_batch_size"),
    "gradient_accumulation_steps": number("train.gradient_accumulation_steps"),
    "num_train_epochs": number("train.epochs"), "max_train_steps": number("train.max_steps"),
    "reduce_loss": _reduce, "clip_grad_norm": _clip,
    "learning_rate": number("optimizer.lr"), "weight_decay": number("optimizer.weight_decay"),
    "fused_optimizer": keep, "lr_scheduler_type": _scheduler, "warmup_ratio": number("scheduler.warmup_ratio"),
    "checkpointing_steps": _checkpointing, "keep_last_n_checkpoints": number("checkpoint.keep_last"),
    "resume_from_checkpoint": to("checkpoint.resume"), "logging_steps": number("logging.every_steps"),
    "with_tracking": keep, "report_to": keep, "wandb_project_name": keep, "wandb_entity": keep,
    "use_lora": keep, "lora_rank": keep, "lora_alpha": keep, "lora_dropout": keep,
    "use_qlora": keep,
    "use_8bit_optimizer": unsupported("bitsandbytes optimizers are not built in; use a plugin optimizer"),
    "use_liger_kernel": unsupported("the chunked loss (the default train.loss) gives the same memory saving exactly"),
    "low_cpu_mem_usage": unsupported("transformers 5 always loads weights without a first random copy"),
    "timeout": unsupported("no process-group timeout setting; the data cache makes preprocessing a one-off"),
    "load_balancing_loss": unsupported("no MoE load-balancing loss"), "load_balancing_weight": keep,
    "config_name": unsupported("the model's own config is used (or model.config for a new model)"),
    "dataset_name": unsupported("use --dataset_mixer_list (data.mixture)"),
    "dataset_mixer": unsupported("use --dataset_mixer_list (data.mixture)"),
    "train_file": _train_file,
    "dataset_config_name": unsupported("a dataset configuration name has no data.mixture key"),
    "max_train_samples": ignored("finetune.py never reads it; give the mixture entries a count"),
    "dataset_transform_fn": unsupported("seqtune's chat encoder and data.truncation replace the transforms"),
    "dataset_target_columns": unsupported("the format's columns are mapped per source (columns:)"),
    "dataset_cache_mode": unsupported("seqtune's data cache (data.cache_dir) is always on and keyed by content"),
    "dataset_local_cache_dir": to("data.cache_dir"),
    "dataset_config_hash": unsupported("the cache is keyed by content"),
    "dataset_skip_cache": unsupported("the cache is keyed by content; a change rebuilds it"),
    "overwrite_cache": unsupported("the cache is keyed by content; a change rebuilds it"),
    "cache_dataset_only": unsupported("run `seqtune check --samples` to prepare and cache the data only"),
    "save_to_hub": unsupported(NO_HUB), "push_to_hub": unsupported(NO_HUB), "hf_entity": unsupported(NO_HUB),
    "hf_repo_id": unsupported(NO_HUB), "hf_repo_revision": unsupported(NO_HUB), "hf_repo_url": unsupported(NO_HUB),
    "hf_metadata_dataset": unsupported(NO_HUB), "try_launch_beaker_eval_jobs": unsupported(BEAKER),
    "try_auto_save_to_beaker": unsupported(BEAKER), "gs_bucket_path": unsupported(BEAKER),
    "oe_eval_tasks": unsupported(BEAKER), "oe_eval_max_length": unsupported(BEAKER),
}
DPO: dict[str, Handler] = {
    "dpo_loss_type": keep, "dpo_beta": keep, "dpo_label_smoothing": keep, "dpo_gamma_beta_ratio": keep,
    "dpo_use_paged_optimizer": unsupported("bitsandbytes optimizers are not built in"),
    "concatenated_forward": keep,
}
# booleans whose default is true, which HfArgumentParser also takes as --no_<name>
NEGATABLE = ("use_flash_attn", "fused_optimizer", "push_to_hub", "try_launch_beaker_eval_jobs",
             "try_auto_save_to_beaker", "use_fast", "concatenated_forward")
ACCELERATE: dict[str, Handler] = {
    "mixed_precision": to("launch.mixed_precision"), "num_machines": number("launch.num_machines"),
    "num_processes": number("launch.num_processes"), "machine_rank": number("launch.machine_rank"),
    "main_process_ip": to("launch.main_process_ip"), "main_process_port": number("launch.main_process_port"),
    "use_deepspeed": keep, "deepspeed_config_file": _deepspeed_file,
    "deepspeed_multinode_launcher": unsupported("seqtune starts each machine's processes with accelerate's "
                                                "launcher (see `seqtune train --print-commands`)"),
    "config_file": _accelerate_config,
}

