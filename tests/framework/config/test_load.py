"""load_recipe: a valid recipe, defaults, components, YAML/file errors and interpolation.

Schema errors are in test_validate.py, `extends:` in test_extends.py, overrides in
test_overrides.py.
"""
from __future__ import annotations

import pytest

from framework.config import Component, LoadedRecipe, Recipe, load_recipe
from framework.config.schema import DeepSpeedConfig
from framework.errors import UserError


# --- a valid recipe ------------------------------------------------------------------------------

def test_minimal_recipe_loads_with_typed_sections(write, minimal):
    loaded = load_recipe(write("recipe.yaml", minimal))

    assert isinstance(loaded, LoadedRecipe)
    assert isinstance(loaded.recipe, Recipe)
    assert loaded.path == "recipe.yaml"
    assert loaded.recipe.output_dir == "out"
    assert loaded.recipe.model.name_or_path == "tiny-model"
    (entry,) = loaded.recipe.data.mixture
    assert (entry.source, entry.fraction, entry.count) == ("rows.jsonl", 1.0, None)


def test_load_recipe_accepts_a_str_path(write, minimal):
    write("recipe.yaml", minimal)
    assert load_recipe("recipe.yaml").recipe.output_dir == "out"


def test_defaults_are_filled_in(write, minimal):
    recipe = load_recipe(write("recipe.yaml", minimal)).recipe

    assert recipe.run_name == "seqtune"
    assert recipe.seed == 42
    assert recipe.plugins == []
    assert recipe.model.revision == "main"
    assert recipe.model.dtype == "float32"
    assert recipe.tokenizer.use_fast is True
    assert recipe.train.loss_reduction == "token_mean"
    assert recipe.train.max_steps is None
    assert recipe.data.max_seq_length == 2048
    assert recipe.data.truncation == Component("right")
    assert recipe.data.packing == Component("none")
    assert recipe.data.mixture[0].split == "train"
    assert recipe.data.mixture[0].loader == "auto"
    assert recipe.optimizer == Component("adamw")
    assert recipe.scheduler == Component("linear")
    assert recipe.logging.loggers == [Component("rich"), Component("jsonl")]
    assert recipe.launch.deepspeed is None
    assert recipe.launch.num_processes == 1


def test_defaults_are_fresh_objects_per_load(write, minimal):
    path = write("recipe.yaml", minimal)
    first = load_recipe(path).recipe
    first.logging.loggers.append(Component("wandb"))
    first.data.truncation.options["x"] = 1

    second = load_recipe(path).recipe
    assert second.logging.loggers == [Component("rich"), Component("jsonl")]
    assert second.data.truncation == Component("right")


def test_data_is_the_resolved_plain_recipe_without_defaults(write, minimal):
    loaded = load_recipe(write("recipe.yaml", minimal + "train:\n  epochs: 2\n"))

    assert loaded.data == {
        "output_dir": "out",
        "model": {"name_or_path": "tiny-model"},
        "data": {"mixture": [{"source": "rows.jsonl", "fraction": 1.0}]},
        "train": {"epochs": 2},
    }
    assert type(loaded.data) is dict
    assert type(loaded.data["data"]["mixture"]) is list


def test_provenance_records_every_key_the_file_sets_and_nothing_else(write, minimal):
    loaded = load_recipe(write("recipe.yaml", minimal))

    assert loaded.provenance == {
        key: "recipe.yaml" for key in [
            "output_dir", "model", "model.name_or_path", "data", "data.mixture",
            "data.mixture[0]", "data.mixture[0].source", "data.mixture[0].fraction",
        ]
    }
    assert loaded.source_of("data.mixture[0].fraction") == "recipe.yaml"
    assert "train.loss_reduction" not in loaded.provenance


def test_non_default_values_are_typed(write, minimal):
    recipe = load_recipe(write("recipe.yaml", minimal + """\
train:
  per_device_batch_size: 4
  max_steps: 100
  loss_reduction: sum
  clip_grad_norm: 1
checkpoint:
  every: epoch
launch:
  deepspeed:
    zero_stage: 3
    offload_params: true
""")).recipe

    assert recipe.train.per_device_batch_size == 4
    assert recipe.train.max_steps == 100
    assert recipe.train.loss_reduction == "sum"
    assert recipe.train.clip_grad_norm == 1.0 and isinstance(recipe.train.clip_grad_norm, float)
    assert recipe.checkpoint.every == "epoch"
    assert recipe.launch.deepspeed == DeepSpeedConfig(zero_stage=3, offload_params=True)


def test_int_is_accepted_where_a_float_is_expected(write):
    recipe = load_recipe(write("recipe.yaml", """\
output_dir: out
model: {name_or_path: m}
data:
  mixture:
    - {source: a.jsonl, fraction: 2}
""")).recipe
    fraction = recipe.data.mixture[0].fraction
    assert fraction == 2.0 and type(fraction) is float


def test_checkpoint_every_accepts_an_int(write, minimal):
    recipe = load_recipe(write("recipe.yaml", minimal + "checkpoint: {every: 500}\n")).recipe
    assert recipe.checkpoint.every == 500


# --- components ----------------------------------------------------------------------------------

def test_component_by_name(write, minimal):
    recipe = load_recipe(write("recipe.yaml", minimal + "optimizer: adamw\n")).recipe
    assert recipe.optimizer == Component("adamw", {})


def test_component_as_mapping_carries_its_options(write, minimal):
    recipe = load_recipe(write("recipe.yaml", minimal + "optimizer: {name: adamw, lr: 1e-5}\n")).recipe
    assert recipe.optimizer == Component("adamw", {"lr": 1e-5})
    assert "name" not in recipe.optimizer.options


def test_exponent_without_dot_in_yaml_is_a_float(write, minimal):
    # PyYAML alone reads 5e-6 as a string; recipes must get a float.
    loaded = load_recipe(write("recipe.yaml", minimal + "optimizer:\n  name: adamw\n  lr: 5e-6\n"))
    lr = loaded.recipe.optimizer.options["lr"]
    assert lr == 5e-6 and type(lr) is float
    assert loaded.data["optimizer"]["lr"] == 5e-6


def test_component_lists_mix_names_and_mappings(write, minimal):
    recipe = load_recipe(write("recipe.yaml", minimal + """\
logging:
  loggers:
    - jsonl
    - {name: wandb, project: demo}
""")).recipe
    assert recipe.logging.loggers == [Component("jsonl"), Component("wandb", {"project": "demo"})]


# --- file and YAML errors ------------------------------------------------------------------------

def test_missing_recipe_file_is_a_user_error(recipe_dir, problem):
    line = problem("nowhere.yaml")
    assert line.startswith("nowhere.yaml:")
    assert "no such recipe file" in line


def test_a_directory_is_not_a_recipe_file(recipe_dir, problem):
    (recipe_dir / "configs").mkdir()
    assert "no such recipe file" in problem("configs")


def test_invalid_yaml_names_file_and_line(write, problem):
    path = write("recipe.yaml", "output_dir: out\nseed: 1\n  bad: indentation\n")
    line = problem(path)
    assert line.startswith("recipe.yaml: invalid YAML at line 3")


def test_duplicate_key_is_invalid_yaml_with_its_line(write, problem):
    path = write("recipe.yaml", "output_dir: out\nseed: 1\noutput_dir: again\n")
    line = problem(path)
    assert line.startswith("recipe.yaml: invalid YAML at line 3")
    assert "output_dir" in line


def test_top_level_list_is_rejected(write, problem):
    line = problem(write("recipe.yaml", "- output_dir: out\n- seed: 1\n"))
    assert line.startswith("recipe.yaml:")
    assert "mapping" in line


def test_empty_file_reports_the_required_keys(write, problems):
    lines = problems(write("recipe.yaml", ""))
    assert any(line.startswith("recipe.yaml: output_dir: missing required key") for line in lines)
    assert any(line.startswith("recipe.yaml: data: missing required key") for line in lines)


def test_user_error_message_is_the_joined_problems(write, problem):
    path = write("recipe.yaml", "- a\n")
    with pytest.raises(UserError) as info:
        load_recipe(path)
    assert str(info.value) == "\n".join(info.value.problems)


# --- interpolation -------------------------------------------------------------------------------

def test_interpolation_resolves_to_the_referenced_value(write, minimal):
    loaded = load_recipe(write("recipe.yaml", minimal + """\
train:
  per_device_batch_size: 4
  gradient_accumulation_steps: ${train.per_device_batch_size}
run_name: bs${train.per_device_batch_size}
"""))
    assert loaded.recipe.train.gradient_accumulation_steps == 4
    assert loaded.recipe.run_name == "bs4"
    assert loaded.data["train"]["gradient_accumulation_steps"] == 4


def test_interpolation_into_a_list_element(write):
    recipe = load_recipe(write("recipe.yaml", """\
output_dir: ${data.mixture[0].source}-out
model: {name_or_path: m}
data:
  mixture:
    - {source: rows, count: 3}
""")).recipe
    assert recipe.output_dir == "rows-out"


def test_interpolation_to_a_missing_key_names_file_and_key(write, minimal, problem):
    path = write("recipe.yaml", minimal + "train:\n  gradient_accumulation_steps: ${train.nope}\n")
    line = problem(path)
    assert line.startswith("recipe.yaml: train.gradient_accumulation_steps:")
    assert "train.nope" in line


def test_interpolation_with_broken_syntax_is_a_user_error(write, minimal, problem):
    path = write("recipe.yaml", minimal + "train:\n  gradient_accumulation_steps: ${train.nope\n")
    line = problem(path)
    assert line.startswith("recipe.yaml:")
    assert "train.gradient_accumulation_steps" in line


def test_interpolated_value_is_still_type_checked(write, minimal, problem):
    path = write("recipe.yaml", minimal + "run_name: demo\ntrain:\n  epochs: ${run_name}\n")
    line = problem(path)
    assert line == "recipe.yaml: train.epochs: expected int, got str"
