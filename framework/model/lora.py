"""LoRA fine-tuning through peft: wrap the model, count what trains, save the adapter (and a merged model).

peft is an optional dependency (`seqtune[peft]`), so it is imported inside the functions: importing this
module costs nothing for full fine-tuning runs.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

from framework.errors import UserError

MISSING_PEFT = "lora needs the peft package: pip install 'seqtune[peft]', or override lora=null"


def apply_lora(model: Any, cfg: Any) -> Any:
    """The model wrapped in a peft LoRA adapter: only the lora_A/lora_B weights require grad.

    Call it after build_model and before param_groups/the optimizer, so the optimizer only sees
    the adapter weights. `cfg` is the recipe's `lora:` section (r, alpha, dropout, target_modules).
    """
    try:
        from peft import LoraConfig, TaskType
    except ImportError:
        raise UserError(MISSING_PEFT) from None

    targets = _targets(model, cfg.target_modules)
    try:
        config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=cfg.r, lora_alpha=cfg.alpha,
                            lora_dropout=cfg.dropout, target_modules=targets)
        peft_model = _wrapped(model, config)
    except ValueError as exc:  # peft's checks of r, dropout and the targets: one line for the user
        raise UserError(_peft_problem(exc, model)) from None
    _inputs_require_grad(peft_model.get_base_model())
    _absolute_base(peft_model)
    return peft_model


def _wrapped(model: Any, config: Any) -> Any:
    from peft import get_peft_model

    with warnings.catch_warnings():
        # peft probes the deprecated is_gradient_checkpointing; the warning is not the user's to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def _absolute_base(model: Any) -> None:
    """Every saved adapter (final, best/, checkpoints) names its base model as the recipe did; a relative
    local path would only load from the directory the run started in, so the adapter records it absolute."""
    for config in model.peft_config.values():
        base = config.base_model_name_or_path
        if base and Path(base).expanduser().exists():
            config.base_model_name_or_path = str(Path(base).expanduser().resolve())


def _peft_problem(exc: ValueError, model: Any) -> str:
    """The recipe key a peft ValueError belongs to, with its first line."""
    import peft

    # NoMatchingPeftModuleError (recent peft) marks "no module matched"; older peft raised a
    # plain ValueError saying "Target modules ... not found", so fall back to its wording
    no_match = getattr(peft, "NoMatchingPeftModuleError", ())
    if isinstance(exc, no_match) or "target module" in str(exc).lower():
        return (f"lora.target_modules: {_first_line(exc)}; the model's linear modules are: "
                f"{', '.join(linear_module_names(model))}")
    return f"lora: {_first_line(exc)}"


def _targets(model: Any, wanted: Any) -> str | list[str]:
    """The string all-linear as it is, or the list with each name checked against the linear layers.

    peft raises only when *no* name matches, so a typo next to a valid name ("q_proj", "v_prj")
    would silently train fewer layers than the recipe asks for; every name must match here.
    """
    if isinstance(wanted, str):
        return wanted  # the schema allows only "all-linear" as a string
    wanted = [str(name) for name in wanted]  # OmegaConf ListConfig -> plain list for peft's json
    available = linear_module_names(model)
    full_names = [name for name, module in model.named_modules() if _is_linear(module)]
    # peft's rule for a list: a module matches when its name equals the entry or ends with ".entry"
    unknown = [w for w in wanted if not any(n == w or n.endswith("." + w) for n in full_names)]
    if unknown:
        raise UserError(f"lora.target_modules: {', '.join(unknown)} match no linear module of this model; "
                        f"its linear modules are: {', '.join(available)} (or use all-linear)")
    return wanted


def linear_module_names(model: Any) -> list[str]:
    """The distinct short names (q_proj, down_proj, lm_head...) of the model's linear layers."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if _is_linear(module)})


def _is_linear(module: Any) -> bool:
    import torch

    # GPT-2 style models use transformers' Conv1D for their projections; peft adapts those too
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def _inputs_require_grad(model: Any) -> None:
    """With reentrant gradient checkpointing and a frozen embedding, no input of a checkpointed
    block requires grad, so torch skips the backward through it and the LoRA weights get no
    gradient. A hook making the embedding output require grad fixes that. Recent transformers
    (on enabling checkpointing) and peft (on wrapping) add it themselves; add it only where it is
    missing, since a second hook would replace the handle of the first and leave it dangling."""
    if not _is_checkpointing(model):
        return
    if getattr(model, "_require_grads_hooks", None) or getattr(model, "_require_grads_hook", None):
        return  # already in place (peft or an earlier call)
    model.enable_input_require_grads()


def _is_checkpointing(model: Any) -> bool:
    # transformers 5 renamed is_gradient_checkpointing (which now warns) to is_activation_checkpointing
    current = getattr(model, "is_activation_checkpointing", None)
    if current is not None:
        return bool(current)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def trainable_summary(model: Any) -> dict:
    """Trainable and total parameter counts, and the trainable share (for the log and run info)."""
    from framework.model.quantization import parameter_count

    trainable = total = 0
    for param in model.parameters():
        count = parameter_count(param)  # whole under ZeRO-3; a packed 4-bit weight counts its weights
        total += count
        trainable += count if param.requires_grad else 0
    return {"trainable": trainable, "total": total, "trainable_fraction": trainable / total if total else 0.0}


def save_lora(model: Any, tokenizer: Any, output_dir: Path, merge: bool, state_dict: dict | None = None) -> None:
    """Write the adapter (adapter_config.json, adapter_model.safetensors) and the tokenizer to
    output_dir; with `merge`, also a full model with the adapter folded in, plus the tokenizer, to
    output_dir/merged (loadable with AutoModelForCausalLM.from_pretrained, no peft needed).

    `model` is the peft model itself (accelerator.unwrap_model(model), not a DDP wrapper); `state_dict`
    its whole state, which ZeRO-3 gathers: the model's own parameters are then empty partitions, so the
    adapter and the merge are made from it. The merge never touches `model`, which stays as it was."""
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir, state_dict=state_dict)  # peft keeps only the adapter's weights
    tokenizer.save_pretrained(output_dir)
    if merge:
        save_merged(model, tokenizer, output_dir / "merged", state_dict)


def save_merged(model: Any, tokenizer: Any, folder: Path, state_dict: dict | None = None) -> None:
    """The full model with the adapter folded in, and the tokenizer, to `folder` (see `save_lora`)."""
    merged = merged_model(model, model.state_dict() if state_dict is None else state_dict)
    merged.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def merged_model(model: Any, state_dict: dict) -> Any:
    """The base model with the adapter folded in, on the host, built from `state_dict`: the same model
    and adapter made on the meta device, given copies of the weights, then merged by peft. A 4-bit base
    (QLoRA) is merged dequantized, into a full-precision model in model.quantization.compute_dtype."""
    import torch

    base = model.get_base_model()
    config = copy.deepcopy(base.config)
    if getattr(base, "is_loaded_in_4bit", False):
        from framework.model.quantization import dequantized, unquantized_config

        dtype = base.config.quantization_config.bnb_4bit_compute_dtype
        config, state_dict = unquantized_config(config, dtype), dequantized(model, state_dict, dtype)
    # The class itself, not from_config: under ZeRO-3 that would partition the new model across ranks
    # (a collective only the main process, which alone saves, would enter).
    with torch.device("meta"):
        skeleton = type(base)(config)
        adapted = _wrapped(skeleton, copy.deepcopy(model.peft_config[model.active_adapter]))
    live = {tensor.data_ptr() for tensor in model.state_dict().values()}  # the run's own: never merged into
    host = {key: value.detach().to("cpu", copy=value.data_ptr() in live) for key, value in state_dict.items()}
    adapted.load_state_dict(host, strict=False, assign=True)
    adapted.get_base_model().tie_weights()  # a tied output layer is not in the state dict twice
    missing = [name for name, param in adapted.named_parameters() if param.is_meta]
    if missing:
        raise RuntimeError(f"merging the LoRA adapter: no weights saved for {', '.join(missing[:3])}")
    return adapted.merge_and_unload()


def load_lora_weights(model: Any, checkpoint: Path) -> None:
    """Resume: copy a checkpoint's adapter weights into a model just wrapped by apply_lora.

    A LoRA checkpoint holds only the adapter (PeftModel.save_pretrained), so the base model is
    rebuilt as at the start (same weights, or the same seeded init) and the adapter loaded onto it.
    The copy is in place, so parameters an optimizer already holds stay the same objects.
    """
    from peft import load_peft_weights, set_peft_model_state_dict

    try:
        result = set_peft_model_state_dict(model, load_peft_weights(str(checkpoint), device="cpu"))
    except RuntimeError as exc:  # shape mismatch: the checkpoint was trained with another lora.r
        if "size mismatch" not in str(exc):
            raise
        raise UserError(f"checkpoint.resume: the adapter in {checkpoint} does not fit this recipe's lora.r "
                        "or model (adapter weight shapes differ); use checkpoint.resume=never to start over"
                        ) from None
    # load_state_dict(strict=False) reports every base weight as missing; only adapter keys count
    missing = [key for key in result.missing_keys if ".lora_" in key]
    if missing or result.unexpected_keys:
        raise UserError(f"checkpoint.resume: the adapter in {checkpoint} does not fit this recipe's "
                        f"lora.target_modules ({len(missing)} adapter weights missing, "
                        f"{len(result.unexpected_keys)} unexpected); use checkpoint.resume=never to start over")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
