"""A recipe's memory settings: everything `MemorySettings` needs, read from the recipe once.

The model's shape comes from `shapes.load_shape`; max_seq_length, batch, processes, precision, dtype,
DeepSpeed (its config_file's stage and offloading when set and readable), gradient checkpointing,
attention, activation offloading, LoRA, a 4-bit base (QLoRA), sequence parallelism from their recipe
keys; the optimizer's state tensors and the loss's chunking from what their plugins declare.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Optional

from framework.config.schema import DeepSpeedConfig, choices
from framework.estimation.adapters import LoraSpec
from framework.estimation.memory import MemoryEstimate, estimate_memory
from framework.estimation.quantization import QuantSpec
from framework.estimation.settings import MemorySettings
from framework.estimation.shapes import ModelShape, load_shape
from framework.model.attention import resolve, separates_documents
from framework.registry.factories import declared


def recipe_settings(recipe: Any, shape: ModelShape, optimizer_states: int, loss: Callable,
                    documents_per_row: bool = False, objective: Any = None) -> tuple[MemorySettings, list[str]]:
    """The recipe's settings (a Recipe) for a model of `shape`, and notes on what could not be read.

    `optimizer_states`: what the recipe's optimizer plugin declares; `loss`: its train.loss plugin,
    bound to its options; `documents_per_row`: whether its packing keeps several documents in a row
    (model.attn_implementation=auto resolves as on a GPU of this machine's software); `objective`: the
    recipe's, built (its sequences per row multiply the micro-batch; a live reference without LoRA is
    a frozen copy of the weights, with LoRA the model with its adapter off; its `generation`, a dict of
    num_generations, max_new_tokens and optionally batch_size (sequences sampled at once), plans the
    phase that samples completions between steps)."""
    notes: list[str] = []
    launch, ds = recipe.launch, recipe.launch.deepspeed
    zero_stage, offload_optimizer, offload_params = None, False, False
    if ds is not None:
        zero_stage, offload_optimizer, offload_params = ds.zero_stage, ds.offload_optimizer, ds.offload_params
        if ds.config_file:
            zero_stage, offload_optimizer, offload_params = _from_ds_file(ds.config_file, zero_stage,
                                                                          offload_optimizer, offload_params, notes)
    if launch.device == "cpu":
        notes.append("launch.device=cpu: the plan describes one process's memory as if it were on a GPU")
    sequences = getattr(objective, "sequences_per_row", 1)
    generation = getattr(objective, "generation", None) or {}  # an objective that samples its completions
    settings = MemorySettings(
        micro_batch=recipe.train.per_device_batch_size * sequences, max_seq_length=recipe.data.max_seq_length,
        num_gpus=launch.num_processes, precision=launch.mixed_precision, weights_dtype=recipe.model.dtype,
        zero_stage=zero_stage, offload_optimizer=offload_optimizer, offload_params=offload_params,
        gradient_checkpointing=recipe.model.gradient_checkpointing,
        activation_offloading=recipe.model.activation_offloading and launch.device != "cpu",
        **loss_settings(loss, shape, zero_stage),
        attn_implementation=resolve(recipe.model.attn_implementation, documents_per_row, gpu=True),
        sequence_parallel=launch.sequence_parallel,
        lora=LoraSpec.from_recipe(recipe.lora) if recipe.lora is not None else None,
        quantization=QuantSpec.from_recipe(recipe.model.quantization) if recipe.model.quantization else None,
        optimizer_states=optimizer_states,
        reference_copy=getattr(objective, "reference", "none") == "live" and recipe.lora is None,
        num_generations=generation.get("num_generations", 1), max_new_tokens=generation.get("max_new_tokens", 0),
        generation_batch=generation.get("batch_size"))
    if sequences > 1:
        notes.append(f"objective {recipe.objective.name}: {sequences} sequences per row of max_seq_length, planned as "
                     f"{sequences} x train.per_device_batch_size rows")
    return settings, notes


def loss_settings(loss: Callable, shape: ModelShape, zero_stage: Optional[int]) -> dict[str, Any]:
    """What the loss plugin declares about its memory, as MemorySettings fields."""
    return {"loss_chunk_tokens": declared(loss, "chunk_tokens", shape.vocab_size),
            "loss_holds_head_gradient": bool(declared(loss, "holds_head_gradient", zero_stage, default=False))}


def estimate_for_recipe(recipe: Any, shape: Optional[ModelShape] = None, *, optimizer_states: Optional[int] = None,
                        loss: Optional[Callable] = None, documents_per_row: Optional[bool] = None,
                        objective: Any = None, cache_dir: Optional[str | Path] = None, **changes: Any
                        ) -> MemoryEstimate:
    """The estimate of a recipe on one of its GPUs; `changes` replace settings (max_seq_length=4096,
    num_gpus=8, zero_stage=3, ...), as `seqtune plan` does for its sweep and remedies."""
    recipe = getattr(recipe, "recipe", recipe)
    if shape is None:
        shape = load_shape(recipe.model, cache_dir=cache_dir)
    notes: list[str] = []
    if None in (optimizer_states, loss, documents_per_row, objective):  # read from the recipe's plugins
        bound_states, bound_loss, documents, built = _declaring_plugins(recipe, notes)
        optimizer_states = bound_states if optimizer_states is None else optimizer_states
        loss, objective = loss or bound_loss, objective or built
        documents_per_row = documents if documents_per_row is None else documents_per_row
    settings, more = recipe_settings(recipe, shape, optimizer_states, loss, documents_per_row, objective)
    if "micro_batch" in changes:  # a change of rows per micro-batch: each row holds the objective's sequences
        changes = {**changes, "micro_batch": changes["micro_batch"] * getattr(objective, "sequences_per_row", 1)}
    if "zero_stage" in changes:  # the loss may keep its gradients another way under another stage
        changes = {**loss_settings(loss, shape, changes["zero_stage"]), **changes}
    estimate = estimate_memory(shape, dataclasses.replace(settings, **changes))
    estimate.notes[:0] = notes + more
    estimate.settings["packing"] = recipe.data.packing.name
    estimate.settings["shape_source"] = shape.source
    return estimate


def _declaring_plugins(recipe: Any, notes: list[str]) -> tuple[int, Callable, bool, Any]:
    """The state tensors the recipe's optimizer plugin declares, its loss plugin bound to its options,
    whether its packing keeps several documents in a row, and its objective (plugins load without torch)."""
    from framework.config.validate import Problems
    from framework.errors import UserError
    from framework.registry import build_registry
    from framework.registry.factories import optimizer_state_tensors

    problems = Problems(lambda key: "recipe")
    registry = build_registry(recipe.plugins)
    optimizer = registry.bind("optimizers", recipe.optimizer, problems, "optimizer")
    loss = registry.bind("losses", recipe.train.loss, problems, "train.loss")
    packing = registry.bind("packing", recipe.data.packing, problems, "data.packing")
    objective = registry.bind("objectives", recipe.objective, problems, "objective")
    if problems.lines:
        raise UserError(problems.lines)
    count, note = optimizer_state_tensors(optimizer, recipe.optimizer.name)
    notes.extend([note] if note else [])
    return count, loss, separates_documents(packing()), objective()


def _from_ds_file(path: str, stage: int, offload_optimizer: bool, offload_params: bool,
                  notes: list[str]) -> tuple[int, bool, bool]:
    try:
        zero = json.loads(Path(path).read_text()).get("zero_optimization", {})
    except (OSError, ValueError, AttributeError):
        notes.append(f"launch.deepspeed.config_file: cannot read {path}; planned with launch.deepspeed's "
                     "zero_stage and offload settings")
        return stage, offload_optimizer, offload_params

    def offloaded(key: str) -> bool:
        device = (zero.get(key) or {}).get("device", "none")
        return device in ("cpu", "nvme")

    file_stage = zero.get("stage", stage)
    return (file_stage if file_stage in choices(DeepSpeedConfig, "zero_stage") else stage, offloaded("offload_optimizer"),
            offloaded("offload_param"))
