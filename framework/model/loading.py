"""The model: pretrained weights, a checkpoint's, or a random init from a config; its parameter groups."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from framework.config.schema import Recipe
from framework.errors import UserError
from framework.model.attention import on_gpu, resolve
from framework.model.ulysses import split_attention


def build_model(recipe: Recipe, tokenizer: Any, checkpoint: Path | None = None, attention: str | None = None) -> Any:
    """Pretrained weights from name_or_path (or from a checkpoint being resumed), or a random init
    from model.config; `attention`: the kernel to use (default: the recipe's, `auto` as for unpacked rows).
    With model.quantization, the base's linear layers in 4 bits (framework.model.quantization)."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = recipe.model
    dtype = getattr(torch, cfg.dtype)
    attention = attention or resolve(cfg.attn_implementation, False, on_gpu(recipe.launch))
    common = {"attn_implementation": attention, "dtype": dtype}
    if checkpoint is not None:
        model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=cfg.trust_remote_code,
                                                     **common)
    elif cfg.quantization is not None:
        from framework.model.quantization import load_quantized

        plain = (lambda: random_init(recipe, tokenizer, dtype)) if cfg.config is not None else None
        model = load_quantized(recipe, plain, common)
    elif cfg.config is not None:
        model = AutoModelForCausalLM.from_config(_config(recipe, tokenizer), trust_remote_code=cfg.trust_remote_code,
                                                 **common)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                cfg.name_or_path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, **common)
        except (OSError, ValueError) as exc:  # ValueError: custom code without trust_remote_code, ...
            raise UserError(f"model.name_or_path: cannot load model '{cfg.name_or_path}': "
                            f"{str(exc).strip().splitlines()[0]}") from None
    if len(tokenizer) > model.config.vocab_size:
        raise UserError(f"model: vocab_size {model.config.vocab_size} is smaller than the tokenizer's "
                        f"{len(tokenizer)} tokens")
    if recipe.launch.sequence_parallel > 1:
        split_attention(model, recipe.launch.sequence_parallel)
    if cfg.gradient_checkpointing:  # renamed activation_checkpointing_enable in transformers 5.x
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    model.config.use_cache = False  # a KV cache in training lets packed rows attend across rows
    return model


def _config(recipe: Recipe, tokenizer: Any) -> Any:
    """model.config as a transformers config; vocab_size and special token ids default to the tokenizer's."""
    from transformers import AutoConfig

    options = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
               "eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id,
               **recipe.model.config}
    return AutoConfig.for_model(**options)


def random_init(recipe: Recipe, tokenizer: Any, dtype: Any) -> Any:
    """The model.config model as from_config initialises it in float32 (the same weights for the same seed),
    built by its class directly: under ZeRO-3, from_config would build it partitioned inside
    deepspeed.zero.Init, and a base to quantize must be whole."""
    from transformers import AutoModelForCausalLM

    config = _config(recipe, tokenizer)
    return AutoModelForCausalLM._model_mapping[type(config)](config).to(dtype)


def param_groups(model: Any) -> list[dict]:
    """Decay matrices only: biases and norm weights (1-D tensors) get no weight decay."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def check_positions(model: Any, max_seq_length: int) -> str | None:
    """The model's own position limit against max_seq_length: a UserError where it cannot run past
    it (learned positions); a warning to show where positions past it were never trained."""
    from framework.estimation.shapes import length_problem

    base = getattr(model, "get_base_model", lambda: model)()  # a LoRA model reports its base's config
    found = length_problem(base.config.to_dict(), max_seq_length, f"model config, {base.config.model_type}")
    if found is not None and found[0]:
        raise UserError(found[1])
    return found and found[1]


def recipe_shape(recipe: Recipe, registry: Any) -> Any:
    """The model's shape for the memory estimate; a model built from a config without a vocab_size
    takes its vocabulary from the tokenizer (with the recipe's chat template: `registry`'s)."""
    from framework.estimation.shapes import load_shape
    from framework.model.tokenizer import load_tokenizer

    config = recipe.model.config
    vocab = None
    if config and "vocab_size" not in config:
        vocab = len(load_tokenizer(recipe, registry.entries["chat_templates"]))
    return load_shape(recipe.model, vocab_size=vocab)
