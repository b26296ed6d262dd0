"""Tokenizer and model loading, and the checks that stop a run before any work is done."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from framework.config.schema import Recipe
from framework.errors import UserError, did_you_mean


def preflight(recipe: Recipe) -> None:
    """Fail fast, one line per problem with the override that fixes it, before loading anything."""
    import torch

    problems = []
    attn = recipe.model.attn_implementation
    gpus = torch.cuda.device_count()
    on_gpu = recipe.launch.device == "cuda" or (recipe.launch.device == "auto" and gpus > 0)
    if attn.startswith("flash_attention"):
        missing = [what for what, ok in (("the flash-attn package", importlib.util.find_spec("flash_attn")),
                                         ("a CUDA GPU", on_gpu)) if not ok]
        if missing:
            problems.append(f"model.attn_implementation={attn} needs {' and '.join(missing)}, not found "
                            "here: override model.attn_implementation=sdpa")
    per_machine = recipe.launch.num_processes // recipe.launch.num_machines
    if recipe.launch.device == "cuda" or (per_machine > 1 and recipe.launch.device == "auto"):
        if gpus < per_machine:
            problems.append(f"launch.num_processes={recipe.launch.num_processes} needs {per_machine} "
                            f"CUDA GPU(s) on this machine, found {gpus}: override "
                            "launch.num_processes=1 launch.device=cpu for a CPU run")
    if recipe.launch.deepspeed is not None and importlib.util.find_spec("deepspeed") is None:
        problems.append("launch.deepspeed needs the deepspeed package: pip install 'seqtune[deepspeed]',"
                        " or override launch.deepspeed=null")
    if problems:
        raise UserError(problems)


def load_tokenizer(recipe: Recipe, templates: dict[str, Any]) -> Any:
    """The recipe's tokenizer, with the chat template it names (`templates`: the registered ones)."""
    from transformers import AutoTokenizer

    cfg = recipe.tokenizer
    name = cfg.name_or_path or recipe.model.name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, revision=cfg.revision or recipe.model.revision, use_fast=cfg.use_fast,
            trust_remote_code=recipe.model.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"tokenizer.name_or_path: cannot load tokenizer '{name}': "
                        f"{str(exc).splitlines()[0]}") from None
    if cfg.chat_template is not None:
        tokenizer.chat_template = chat_template_source(cfg.chat_template, templates)
    if not tokenizer.chat_template:
        raise UserError(f"tokenizer.chat_template: tokenizer '{name}' has no chat template of its own; "
                        f"name one of: {', '.join(sorted(templates))}")
    if cfg.add_bos:
        add_bos(tokenizer)
    if tokenizer.pad_token_id is None:  # padding is masked out of the loss, so eos is a safe pad
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def add_bos(tokenizer: Any) -> None:
    """Put BOS into the template itself, so training and the saved tokenizer's inference agree."""
    if tokenizer.bos_token is None:
        raise UserError("tokenizer.add_bos: this tokenizer has no BOS token; set tokenizer.add_bos=false")
    probe = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    if not probe.startswith(tokenizer.bos_token):
        tokenizer.chat_template = "{{ bos_token }}" + tokenizer.chat_template


def chat_template_source(value: str, templates: dict[str, Any]) -> str:
    """A registered template name, a .jinja file, or Jinja source itself."""
    if "{{" in value or "{%" in value:
        return value
    if value.endswith(".jinja"):
        path = Path(value)
        if not path.is_file():
            raise UserError(f"tokenizer.chat_template: no such file '{value}'")
        return path.read_text()
    if value not in templates:
        raise UserError(f"tokenizer.chat_template: unknown chat template '{value}'"
                        + did_you_mean(value, templates))
    entry = templates[value]
    return entry.factory if hasattr(entry, "factory") else entry


def build_model(recipe: Recipe, tokenizer: Any, checkpoint: Path | None = None) -> Any:
    """Pretrained weights from name_or_path (or from a checkpoint being resumed), or a random init
    from model.config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = recipe.model
    dtype = getattr(torch, cfg.dtype)
    common = {"attn_implementation": cfg.attn_implementation, "dtype": dtype}
    if checkpoint is not None:
        model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=cfg.trust_remote_code,
                                                     **common)
    elif cfg.config is not None:
        options = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                   "eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id,
                   **cfg.config}
        config = AutoConfig.for_model(**options)
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code, **common)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                cfg.name_or_path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, **common)
        except OSError as exc:
            raise UserError(f"model.name_or_path: cannot load model '{cfg.name_or_path}': "
                            f"{str(exc).splitlines()[0]}") from None
    if len(tokenizer) > model.config.vocab_size:
        raise UserError(f"model: vocab_size {model.config.vocab_size} is smaller than the tokenizer's "
                        f"{len(tokenizer)} tokens")
    if cfg.gradient_checkpointing:  # renamed activation_checkpointing_enable in transformers 5.x
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    model.config.use_cache = False  # a KV cache in training lets packed rows attend across rows
    return model


def param_groups(model: Any) -> list[dict]:
    """Decay matrices only: biases and norm weights (1-D tensors) get no weight decay."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
