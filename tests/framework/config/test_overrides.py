"""`key=value` overrides given after the recipe path, and their provenance."""
from __future__ import annotations

import pytest

from framework.config import Component, load_recipe
from framework.config.schema import DeepSpeedConfig
from framework.errors import UserError

RECIPE = """\
output_dir: out
model: {name_or_path: m}
data:
  mixture:
    - {source: a.jsonl, fraction: 1.0}
    - {source: b.jsonl, count: 10}
train: {epochs: 2, per_device_batch_size: 4}
optimizer: {name: adamw, lr: 1.0e-5}
launch:
  deepspeed: {zero_stage: 3, offload_optimizer: true, offload_params: true}
"""


@pytest.fixture
def path(write):
    return write("recipe.yaml", RECIPE)


def test_scalar_override_sets_a_new_key(path):
    loaded = load_recipe(path, ["train.max_steps=5"])
    assert loaded.recipe.train.max_steps == 5
    assert loaded.recipe.train.epochs == 2  # siblings kept
    assert loaded.source_of("train.max_steps") == "override train.max_steps=5"
    assert loaded.source_of("train.epochs") == "recipe.yaml"
    assert loaded.data["train"]["max_steps"] == 5


def test_override_replaces_a_value_from_the_file(path):
    loaded = load_recipe(path, ["train.epochs=7"])
    assert loaded.recipe.train.epochs == 7
    assert loaded.source_of("train.epochs") == "override train.epochs=7"


def test_override_inside_a_list_element(path):
    loaded = load_recipe(path, ["data.mixture[0].fraction=0.5"])
    assert loaded.recipe.data.mixture[0].fraction == 0.5
    assert loaded.recipe.data.mixture[1].count == 10
    assert loaded.source_of("data.mixture[0].fraction") == "override data.mixture[0].fraction=0.5"
    assert loaded.source_of("data.mixture[0].source") == "recipe.yaml"


def test_override_to_null_removes_a_section(path):
    loaded = load_recipe(path, ["launch.deepspeed=null"])
    assert loaded.recipe.launch.deepspeed is None
    assert loaded.source_of("launch.deepspeed") == "override launch.deepspeed=null"
    assert "launch.deepspeed.offload_params" not in loaded.provenance


def test_override_replaces_a_mapping_and_forgets_its_old_keys(path):
    loaded = load_recipe(path, ["launch.deepspeed={zero_stage: 2}"])
    assert loaded.recipe.launch.deepspeed == DeepSpeedConfig(zero_stage=2)
    assert loaded.source_of("launch.deepspeed.zero_stage") == "override launch.deepspeed={zero_stage: 2}"
    # offload_optimizer is no longer set by anything: it has its default value.
    assert loaded.recipe.launch.deepspeed.offload_optimizer is False
    assert "launch.deepspeed.offload_optimizer" not in loaded.provenance


def test_override_replaces_a_whole_list(path):
    loaded = load_recipe(path, ["data.mixture=[{source: c.jsonl, count: 3}]"])
    assert [(m.source, m.count) for m in loaded.recipe.data.mixture] == [("c.jsonl", 3)]
    assert not any(key.startswith("data.mixture[1]") for key in loaded.provenance)
    assert loaded.source_of("data.mixture[0].source").startswith("override data.mixture=")


def test_override_values_are_parsed_as_yaml(path):
    recipe = load_recipe(path, [
        "optimizer.lr=5e-6", "model.gradient_checkpointing=true", "run_name=a=b",
        "scheduler={name: cosine, warmup_ratio: 0.1}",
    ]).recipe
    assert recipe.optimizer == Component("adamw", {"lr": 5e-6})
    assert type(recipe.optimizer.options["lr"]) is float
    assert recipe.model.gradient_checkpointing is True
    assert recipe.run_name == "a=b"
    assert recipe.scheduler == Component("cosine", {"warmup_ratio": 0.1})


def test_later_overrides_win(path):
    loaded = load_recipe(path, ["train.epochs=3", "train.epochs=4"])
    assert loaded.recipe.train.epochs == 4
    assert loaded.source_of("train.epochs") == "override train.epochs=4"


def test_overrides_apply_before_interpolation(write):
    path = write("recipe.yaml", RECIPE + "run_name: bs${train.per_device_batch_size}\n")
    recipe = load_recipe(path, ["train.per_device_batch_size=8"]).recipe
    assert recipe.run_name == "bs8"


def test_override_can_fix_an_invalid_file(write):
    path = write("recipe.yaml", RECIPE.replace("epochs: 2", "epochs: 0"))
    assert load_recipe(path, ["train.epochs=1"]).recipe.train.epochs == 1


def test_override_can_supply_a_required_key(write):
    path = write("recipe.yaml", RECIPE.replace("output_dir: out\n", ""))
    loaded = load_recipe(path, ["output_dir=elsewhere"])
    assert loaded.recipe.output_dir == "elsewhere"
    assert loaded.source_of("output_dir") == "override output_dir=elsewhere"


# --- errors --------------------------------------------------------------------------------------

def test_type_error_in_an_override_names_the_override(path, problem):
    line = problem(path, ["train.max_steps=abc"])
    assert line == "override train.max_steps=abc: train.max_steps: expected int, got str"


def test_choice_error_in_an_override_names_the_override(path, problem):
    line = problem(path, ["launch.mixed_precision=bf61"])
    assert line == ("override launch.mixed_precision=bf61: launch.mixed_precision: "
                    "invalid value 'bf61'; did you mean 'bf16'?")


def test_unknown_nested_key_in_an_override_names_the_override(path, problem):
    line = problem(path, ["train.max_stepz=5"])
    assert line == "override train.max_stepz=5: train.max_stepz: unknown key; did you mean 'max_steps'?"


def test_unknown_top_level_key_in_an_override_names_the_override(path, problem):
    line = problem(path, ["trian.max_steps=5"])
    assert line == "override trian.max_steps=5: trian: unknown key; did you mean 'train'?"


def test_override_option_of_a_component_given_by_name(write):
    # The file names the optimizer by name only; the override adds an option. Either the
    # option joins the named component, or the error blames the override (not the file).
    path = write("recipe.yaml", RECIPE.replace("optimizer: {name: adamw, lr: 1.0e-5}", "optimizer: adamw"))
    try:
        recipe = load_recipe(path, ["optimizer.lr=0.1"]).recipe
    except UserError as exc:
        assert exc.problems[0].startswith("override optimizer.lr=0.1:"), exc.problems
    else:
        assert recipe.optimizer == Component("adamw", {"lr": 0.1})


def test_override_causing_an_impossible_combination(path, problem):
    line = problem(path, ["launch.deepspeed.zero_stage=2"])
    assert line.endswith("launch.deepspeed.offload_params: needs launch.deepspeed.zero_stage=3")


def test_broken_interpolation_in_an_override_names_the_override(path, problem):
    line = problem(path, ["train.epochs=${nope}"])
    assert line.startswith("override train.epochs=${nope}: train.epochs:")
    assert "nope" in line


@pytest.mark.parametrize("override", ["train.max_steps", "=5", "  =5", ""])
def test_override_without_key_and_equals_is_an_error(path, override, problem):
    line = problem(path, [override])
    assert line.startswith(f"override '{override}':")
    assert "key=value" in line


@pytest.mark.parametrize("override", [
    "data.mixture[5].fraction=0.5",  # no such list element
    "data.mixture[x].fraction=0.5",  # index is not a number
    "data.mixture.source=x",  # a list has no keys
    "run_name=[1,",  # the value is not valid YAML
])
def test_malformed_override_is_a_user_error_naming_it(path, override, problem):
    line = problem(path, [override])
    assert override in line
