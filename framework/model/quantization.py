"""QLoRA's frozen 4-bit base (`model.quantization`): loading it through transformers' bitsandbytes
integration, counting its parameters, and dequantizing it for a merge.

What is quantized is what transformers' integration quantizes: the decoder's linear layers; the output
layer (and a tied one's embedding) and the embeddings are left as they are, as peers leave them. The
unquantized weights (embeddings, norms, output layer) keep model.dtype: its default, float32, is the
QLoRA paper's fp32 norms; a recipe that asks for bfloat16 weights gets them (peft's
prepare_model_for_kbit_training would cast them back to fp32, doubling the embeddings' memory and making
the activations fp32). Gradient checkpointing stays build_model's, and apply_lora adds the input-grad hook
it needs, as for LoRA on a full-precision base.

bitsandbytes is an optional dependency (`seqtune[qlora]`): it is imported only when a recipe asks for it.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Optional

from framework.errors import UserError

MISSING = "model.quantization needs the bitsandbytes package: pip install 'seqtune[qlora]'"


def installed() -> bool:
    """Whether bitsandbytes can be imported, without importing it (a check-time question)."""
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def prequantized(config: dict) -> Optional[str]:
    """The quantization a model's config.json says its weights already have (gptq, awq, bitsandbytes...),
    or None: such weights are not the full-precision ones bitsandbytes quantizes."""
    found = config.get("quantization_config")
    if not found:
        return None
    return str(found.get("quant_method", "unknown")) if isinstance(found, dict) else "unknown"


def prequantized_problem(name: str, method: str) -> str:
    return (f"{name} is already quantized ({method}); model.quantization quantizes a "
            "full-precision model itself: point model.name_or_path at the unquantized model")


def bnb_config(recipe: Any) -> Any:
    """transformers' BitsAndBytesConfig for the recipe's model.quantization."""
    import torch

    _import_bitsandbytes()
    from transformers import BitsAndBytesConfig

    q = recipe.model.quantization
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.method,
                              bnb_4bit_use_double_quant=q.double_quant,
                              bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype),
                              bnb_4bit_quant_storage=storage_dtype(recipe))


def storage_dtype(recipe: Any) -> Any:
    """The dtype the packed 4-bit weights are stored in (two 4-bit values a byte, whatever the dtype).

    ZeRO-3 partitions and gathers every parameter as a flat tensor of the one dtype it holds them all in
    (its bf16/fp16 when enabled, else model.dtype): packed weights stored in that dtype go through it like
    any other weight, as in the QLoRA + ZeRO-3/FSDP recipes. Elsewhere they stay uint8, which no dtype cast
    touches (DeepSpeed's bf16/fp16 modes cast every floating-point parameter)."""
    import torch

    if recipe.launch.deepspeed is None:
        return torch.uint8
    from framework.launch.deepspeed import deepspeed_config

    config = deepspeed_config(recipe, 1)  # the user's file or the bundled one, "auto" filled from the recipe
    if config.get("zero_optimization", {}).get("stage") != 3:
        return torch.uint8
    enabled = [dtype for key, dtype in (("bf16", "bfloat16"), ("fp16", "float16"))
               if config.get(key, {}).get("enabled") is True]
    return getattr(torch, (enabled or [recipe.model.dtype])[0])


def load_quantized(recipe: Any, plain: Optional[Callable[[], Any]], common: dict) -> Any:
    """The base with its linear layers in 4 bits. From model.name_or_path (`plain` None), bitsandbytes
    quantizes each weight as it is read. A model built from model.config (`plain()` builds it, seeded, as
    build_model builds an unquantized one) is quantized from its state dict in memory: transformers
    quantizes only while it loads weights, and a state dict is a source it loads from (no folder written)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg, quantization = recipe.model, bnb_config(recipe)
    if plain is not None:
        model = plain()
        model = type(model).from_pretrained(None, config=model.config, state_dict=model.state_dict(),
                                            quantization_config=quantization, **common)
    else:
        try:
            config = AutoConfig.from_pretrained(cfg.name_or_path, revision=cfg.revision,
                                                trust_remote_code=cfg.trust_remote_code)
            method = prequantized(config.to_dict())
            if method is not None:
                raise UserError(f"model.name_or_path: {prequantized_problem(cfg.name_or_path, method)}")
            model = AutoModelForCausalLM.from_pretrained(
                cfg.name_or_path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
                quantization_config=quantization, **common)
        except (OSError, ValueError) as exc:  # as for an unquantized load (loading.build_model)
            raise UserError(f"model.name_or_path: cannot load model '{cfg.name_or_path}': "
                            f"{str(exc).strip().splitlines()[0]}") from None
    layers = quantized_layers(model)
    if not layers:
        raise UserError(f"model.quantization: bitsandbytes found no linear layer to quantize in this model "
                        f"({type(model).__name__}); remove model.quantization to train LoRA on the full-precision model")
    for name in layers:
        # On CPUs with AVX512-BF16, a 4-bit layer called in eval mode without gradients repacks its weight in
        # place into a CPU inference layout (another shape) and computes in bf16: evaluation and reference
        # scoring would not compute what training computes, and ZeRO-3 (which holds the weight's shape) and
        # checkpoints (which repack it back) would see it change under them. Every call takes the training path.
        model.get_submodule(name).support_avx512bf16_for_cpu = False
    return model


def _import_bitsandbytes() -> None:
    """Import bitsandbytes or say which extra installs it. On CPUs with AVX512-BF16 its import asks the hub
    (through the kernels package) for an optional CPU kernel and logs two warnings when that fails (offline,
    or the publisher unverified): its own kernel runs instead, so the import is quiet."""
    import importlib

    loggers = [logging.getLogger(name) for name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        importlib.import_module("bitsandbytes")
    except ImportError:
        raise UserError(MISSING) from None
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def quantized_layers(model: Any) -> list[str]:
    """The names of the model's 4-bit linear layers."""
    import bitsandbytes as bnb

    return [name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)]


def parameter_count(param: Any) -> int:
    """A parameter's element count: a packed 4-bit weight counts the weights it holds (its quantization
    state keeps their shape), not its bytes; ZeRO-3's partitioned parameters count whole (ds_numel)."""
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    if shape is not None:
        return math.prod(shape)
    return getattr(param, "ds_numel", param.numel())


def dequantized(model: Any, state: dict, dtype: Any) -> dict:
    """`state` (the peft model's state dict, ZeRO-3's gathered one or the live one) with every packed
    4-bit weight dequantized to `dtype` and its quantization-state entries dropped; the other base weights
    in `dtype` too, the adapter's as they are (peft merges it in its own precision, then casts).

    A merge folds the adapter into these weights: merging into the 4-bit weights themselves would round
    the update away. They are the weights the adapter was trained against, so the merged model computes
    what the adapter on the 4-bit base computed, up to `dtype`'s rounding."""
    import bitsandbytes.functional as F

    packed = {f"{name}.weight": module.weight.quant_state for name, module in model.named_modules()
              if getattr(getattr(module, "weight", None), "quant_state", None) is not None}
    extras = tuple(f"{key}." for key in packed)  # bitsandbytes' serialized quantization state (absmax...)
    out = {}
    for key, value in state.items():
        if key.startswith(extras):
            continue  # the dequantized weight replaces it
        if key in packed:
            value = F.dequantize_4bit(value.detach().to(packed[key].absmax.device), packed[key])
        if value.is_floating_point() and ".lora_" not in key:
            value = value.to(dtype)
        out[key] = value
    return out


def unquantized_config(config: Any, dtype: Any) -> Any:
    """A 4-bit model's config (a copy) made the full-precision merged model's: no quantization config (it
    would make AutoModelForCausalLM look for packed weights), `dtype` as its dtype."""
    for name in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, name):
            delattr(config, name)
    config.dtype = dtype
    return config
