"""`extends:`: recipes built on other recipe files, with provenance per key."""
from __future__ import annotations

from framework.config import Component, load_recipe

BASE = """\
output_dir: base-out
model: {name_or_path: base-model}
data:
  max_seq_length: 512
  mixture:
    - {source: a.jsonl, fraction: 1.0}
    - {source: b.jsonl, count: 100}
train:
  epochs: 3
  per_device_batch_size: 2
optimizer: {name: adamw, lr: 1.0e-5, weight_decay: 0.1}
"""


def test_extends_a_single_file(write):
    write("base.yaml", BASE)
    loaded = load_recipe(write("child.yaml", "extends: base.yaml\noutput_dir: child-out\n"))

    assert loaded.recipe.output_dir == "child-out"
    assert loaded.recipe.model.name_or_path == "base-model"
    assert loaded.recipe.train.epochs == 3
    assert "extends" not in loaded.data


def test_extends_a_list_of_files_later_ones_win(write):
    write("base.yaml", BASE)
    write("long.yaml", "train: {epochs: 10}\nseed: 7\n")
    write("short.yaml", "train: {epochs: 1}\n")
    loaded = load_recipe(write("child.yaml", "extends: [base.yaml, long.yaml, short.yaml]\n"))

    assert loaded.recipe.train.epochs == 1
    assert loaded.recipe.seed == 7
    assert loaded.source_of("train.epochs") == "short.yaml"
    assert loaded.source_of("seed") == "long.yaml"
    assert loaded.source_of("output_dir") == "base.yaml"


def test_parent_path_is_relative_to_the_extending_file(write):
    write("recipes/base/common.yaml", BASE)
    write("recipes/sft/mid.yaml", "extends: ../base/common.yaml\nseed: 1\n")
    write("recipes/sft/run/child.yaml", "extends: ../mid.yaml\nseed: 2\n")
    # A file of the same name next to the working directory must not be picked up.
    write("common.yaml", "output_dir: wrong\n")

    loaded = load_recipe("recipes/sft/run/child.yaml")
    assert loaded.recipe.output_dir == "base-out"
    assert loaded.recipe.seed == 2
    assert loaded.source_of("output_dir") == "recipes/base/common.yaml"
    assert loaded.path == "recipes/sft/run/child.yaml"


def test_child_overrides_base_scalars(write):
    write("base.yaml", BASE)
    loaded = load_recipe(write("child.yaml", "extends: base.yaml\ntrain: {epochs: 5}\n"))
    assert loaded.recipe.train.epochs == 5
    assert loaded.source_of("train.epochs") == "child.yaml"


def test_nested_mappings_are_merged(write):
    write("base.yaml", BASE)
    loaded = load_recipe(write("child.yaml", """\
extends: base.yaml
train: {max_steps: 9}
optimizer: {lr: 2.0e-5}
"""))
    train = loaded.recipe.train
    assert (train.epochs, train.per_device_batch_size, train.max_steps) == (3, 2, 9)
    assert loaded.recipe.optimizer == Component("adamw", {"lr": 2e-5, "weight_decay": 0.1})
    assert loaded.source_of("train.epochs") == "base.yaml"
    assert loaded.source_of("train.max_steps") == "child.yaml"
    assert loaded.source_of("optimizer.name") == "base.yaml"
    assert loaded.source_of("optimizer.lr") == "child.yaml"
    assert loaded.data["data"]["max_seq_length"] == 512


def test_lists_are_replaced_not_merged(write):
    write("base.yaml", BASE)
    loaded = load_recipe(write("child.yaml", """\
extends: base.yaml
data:
  mixture:
    - {source: c.jsonl, count: 5}
"""))
    mixture = loaded.recipe.data.mixture
    assert [(m.source, m.fraction, m.count) for m in mixture] == [("c.jsonl", None, 5)]
    assert loaded.recipe.data.max_seq_length == 512  # the rest of data still merged
    assert loaded.source_of("data.mixture[0].source") == "child.yaml"
    assert not any(key.startswith("data.mixture[1]") for key in loaded.provenance)
    # fraction was set in the base's data.mixture[0]; the replaced list has none.
    assert "data.mixture[0].fraction" not in loaded.provenance


def test_child_can_null_a_base_section(write):
    write("base.yaml", BASE + "launch: {deepspeed: {zero_stage: 3, offload_params: true}}\n")
    loaded = load_recipe(write("child.yaml", "extends: base.yaml\nlaunch: {deepspeed: null}\n"))
    assert loaded.recipe.launch.deepspeed is None
    assert loaded.source_of("launch.deepspeed") == "child.yaml"
    assert "launch.deepspeed.zero_stage" not in loaded.provenance


def test_provenance_across_three_levels(write):
    write("a.yaml", BASE)
    write("b.yaml", "extends: a.yaml\ntrain: {epochs: 4}\n")
    loaded = load_recipe(write("c.yaml", "extends: b.yaml\nseed: 3\n"))
    assert loaded.source_of("output_dir") == "a.yaml"
    assert loaded.source_of("train.epochs") == "b.yaml"
    assert loaded.source_of("train.per_device_batch_size") == "a.yaml"
    assert loaded.source_of("seed") == "c.yaml"
    assert "train.max_steps" not in loaded.provenance


def test_source_of_an_unset_key_is_its_nearest_set_parent(write):
    write("base.yaml", BASE)
    loaded = load_recipe(write("child.yaml", "extends: base.yaml\ntrain: {max_steps: 9}\n"))
    assert loaded.source_of("data.mixture[1].split") == "base.yaml"
    assert loaded.source_of("train.gradient_accumulation_steps") == "child.yaml"


def test_base_need_not_be_complete_on_its_own(write):
    write("base.yaml", "model: {name_or_path: m}\ntrain: {epochs: 2}\n")
    loaded = load_recipe(write("child.yaml", """\
extends: base.yaml
output_dir: out
data: {mixture: [{source: a, fraction: 1.0}]}
"""))
    assert loaded.recipe.train.epochs == 2


def test_interpolation_resolves_across_files(write):
    write("base.yaml", BASE + "run_name: bs${train.per_device_batch_size}\n")
    loaded = load_recipe(write("child.yaml", "extends: base.yaml\ntrain: {per_device_batch_size: 8}\n"))
    assert loaded.recipe.run_name == "bs8"


def test_error_names_the_file_that_set_the_bad_key(write, problems):
    write("base.yaml", BASE + "checkpoint: {keep_lst: 2}\n")
    lines = problems(write("child.yaml", "extends: base.yaml\ntrain: {epochs: zero}\n"))
    assert sorted(lines) == [
        "base.yaml: checkpoint.keep_lst: unknown key; did you mean 'keep_last'?",
        "child.yaml: train.epochs: expected int, got str",
    ]


def test_missing_key_in_a_base_list_entry_names_the_base(write, problem):
    write("base.yaml", BASE.replace("{source: b.jsonl, count: 100}", "{count: 100}"))
    line = problem(write("child.yaml", "extends: base.yaml\n"))
    assert line.startswith("base.yaml: data.mixture[1].source: missing required key")


def test_missing_parent_file_names_the_extending_file(write, problem):
    write("sub/child.yaml", "extends: nope.yaml\noutput_dir: x\n")
    line = problem("sub/child.yaml")
    assert line.startswith("sub/child.yaml: extends:")
    assert "'nope.yaml'" in line


def test_missing_grandparent_names_the_parent(write, problem):
    write("base.yaml", "extends: gone.yaml\n")
    line = problem(write("child.yaml", "extends: base.yaml\n"))
    assert line.startswith("base.yaml: extends:")
    assert "gone.yaml" in line


def test_extends_cycle_is_a_user_error(write, problem):
    write("a.yaml", "extends: b.yaml\noutput_dir: x\n")
    write("b.yaml", "extends: a.yaml\n")
    line = problem("a.yaml")
    assert "circular extends" in line
    assert "a.yaml" in line and "b.yaml" in line


def test_extending_itself_is_a_cycle(write, problem):
    line = problem(write("self.yaml", "extends: self.yaml\n"))
    assert line.startswith("self.yaml: extends:")
    assert "circular" in line


def test_same_file_twice_through_different_paths_is_not_a_cycle(write):
    write("base.yaml", BASE)
    write("x/one.yaml", "extends: ../base.yaml\nseed: 1\n")
    loaded = load_recipe(write("child.yaml", "extends: [x/one.yaml, x/../base.yaml]\n"))
    assert loaded.recipe.seed == 1


def test_invalid_yaml_in_a_parent_names_the_parent(write, problem):
    write("base.yaml", "output_dir: out\nseed: [1,\n")
    line = problem(write("child.yaml", "extends: base.yaml\n"))
    assert line.startswith("base.yaml: invalid YAML at line")


def test_extends_of_the_wrong_type_is_a_user_error(write, problem):
    line = problem(write("child.yaml", "extends: 5\noutput_dir: x\n"))
    assert line.startswith("child.yaml: extends:")
