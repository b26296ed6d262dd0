"""DeepSpeed ZeRO configs: bundled ones equivalent to open-instruct's stage 2, stage 3 and stage 3
with CPU offloading, or the user's file; every "auto" the recipe decides is filled from it.

Bucket sizes left "auto" are filled by accelerate from the model's hidden size when the model is
prepared. The engine keeps its own accumulation windows: DeepSpeed gets the same accumulation
count, is told where each window ends, and steps itself there.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from framework.config.schema import Recipe
from framework.errors import UserError

BUNDLED = Path(__file__).parent / "ds_configs"


def bundled_name(recipe: Recipe) -> str:
    ds = recipe.launch.deepspeed
    if ds.zero_stage == 3:
        return "stage3_offload" if (ds.offload_params or ds.offload_optimizer) else "stage3"
    return "stage2"


def deepspeed_config(recipe: Recipe, world_size: int) -> dict[str, Any]:
    ds, train = recipe.launch.deepspeed, recipe.train
    if ds.config_file:
        try:
            config = json.loads(Path(ds.config_file).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"launch.deepspeed.config_file: cannot read {ds.config_file}: {exc}") from None
    else:
        config = json.loads((BUNDLED / f"{bundled_name(recipe)}.json").read_text())
        zero = config["zero_optimization"]
        zero["stage"] = ds.zero_stage
        if ds.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if not ds.offload_params:
            zero.pop("offload_param", None)
    precision = recipe.launch.mixed_precision
    known = {"train_micro_batch_size_per_gpu": train.per_device_batch_size,
             "gradient_accumulation_steps": train.gradient_accumulation_steps,
             "train_batch_size": train.per_device_batch_size * train.gradient_accumulation_steps * world_size,
             "gradient_clipping": train.clip_grad_norm or 0.0}
    for key, value in known.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
    for key, enabled in (("bf16", precision == "bf16"), ("fp16", precision == "fp16")):
        if config.get(key, {}).get("enabled") == "auto":
            config[key]["enabled"] = enabled
    return config
