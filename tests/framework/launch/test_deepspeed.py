"""DeepSpeed configs: the bundled ones, and every "auto" the recipe decides filled from it."""
from __future__ import annotations

import json

import pytest

from framework.config import load_recipe
from framework.launch.deepspeed import deepspeed_config
from framework.errors import UserError


@pytest.fixture
def recipe(repo):
    def make(*overrides: str):
        return load_recipe(repo / "recipes/tulu3/gemma2-2b-sft.yaml", list(overrides)).recipe

    return make


def test_tulu_stage2_matches_open_instructs_stage2_with_the_recipe_filled_in(recipe):
    config = deepspeed_config(recipe(), world_size=4)
    assert config["zero_optimization"]["stage"] == 2 and "offload_optimizer" not in config["zero_optimization"]
    assert config["train_micro_batch_size_per_gpu"] == 1 and config["gradient_accumulation_steps"] == 2
    assert config["train_batch_size"] == 1 * 2 * 4
    assert config["bf16"]["enabled"] is True and config["fp16"]["enabled"] is False
    assert config["gradient_clipping"] == 1.0  # open-instruct's "auto", which accelerate fills with 1.0
    unclipped = deepspeed_config(recipe("train.clip_grad_norm=null"), world_size=4)
    assert unclipped["gradient_clipping"] == 0.0  # no train.clip_grad_norm: no clipping
    assert config["zero_optimization"]["reduce_bucket_size"] == "auto"  # accelerate sizes it from the model


@pytest.mark.parametrize("overrides, stage, offload", [
    (["launch.deepspeed={zero_stage: 3}"], 3, set()),
    (["launch.deepspeed={zero_stage: 3, offload_params: true, offload_optimizer: true}"], 3,
     {"offload_param", "offload_optimizer"}),
    (["launch.deepspeed={zero_stage: 2, offload_optimizer: true}"], 2, {"offload_optimizer"}),
])
def test_stage_and_offloading_pick_the_bundled_config(recipe, overrides, stage, offload):
    zero = deepspeed_config(recipe(*overrides, "train.clip_grad_norm=1.0"), world_size=2)["zero_optimization"]
    assert zero["stage"] == stage
    assert {k for k in ("offload_param", "offload_optimizer") if k in zero} == offload
    if stage == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True


def test_a_users_config_file_keeps_its_values_and_gets_the_autos(recipe, tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 1}, "gradient_accumulation_steps": "auto",
                                "train_micro_batch_size_per_gpu": 7, "bf16": {"enabled": "auto"}}))
    config = deepspeed_config(recipe(f"launch.deepspeed={{config_file: {path}}}"), world_size=4)
    assert config["zero_optimization"] == {"stage": 1} and config["train_micro_batch_size_per_gpu"] == 7
    assert config["gradient_accumulation_steps"] == 2 and config["bf16"]["enabled"] is True


def test_an_unreadable_config_file_is_a_user_error(recipe, tmp_path):
    with pytest.raises(UserError, match="launch.deepspeed.config_file"):
        deepspeed_config(recipe(f"launch.deepspeed={{config_file: {tmp_path / 'missing.json'}}}"), world_size=1)
