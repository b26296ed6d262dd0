"""Schema validation through load_recipe: every kind of problem, each naming file, key and a fix."""
from __future__ import annotations

import pytest

from framework.config import load_recipe

HEAD = """\
output_dir: out
model: {name_or_path: m}
"""
ONE_SOURCE = """\
data:
  mixture:
    - {source: a.jsonl, fraction: 1.0}
"""


# --- unknown keys --------------------------------------------------------------------------------

def test_unknown_top_level_key_suggests_the_close_one(write, minimal, problem):
    line = problem(write("recipe.yaml", minimal + "trian:\n  epochs: 2\n"))
    assert line == "recipe.yaml: trian: unknown key; did you mean 'train'?"


def test_unknown_nested_key_suggests_the_close_one(write, minimal, problem):
    line = problem(write("recipe.yaml", minimal + "train:\n  max_step: 5\n"))
    assert line == "recipe.yaml: train.max_step: unknown key; did you mean 'max_steps'?"


def test_unknown_key_inside_a_list_element(write, problem):
    path = write("recipe.yaml", HEAD + """\
data:
  mixture:
    - {source: a.jsonl, fraction: 1.0}
    - {source: b.jsonl, fracton: 0.5}
""")
    line = problem(path)
    assert line == "recipe.yaml: data.mixture[1].fracton: unknown key; did you mean 'fraction'?"


def test_unknown_key_with_nothing_close_lists_the_valid_keys(write, minimal, problem):
    line = problem(write("recipe.yaml", minimal + "checkpoint:\n  zzz: 1\n"))
    assert line == "recipe.yaml: checkpoint.zzz: unknown key; expected one of: every, keep_last, resume"


# --- wrong types ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("yaml_tail", "key", "message"), [
    ("train: {epochs: two}", "train.epochs", "expected int, got str"),
    ("train: {epochs: 1.5}", "train.epochs", "expected int, got float"),
    ("seed: true", "seed", "expected int, got bool"),
    ("train: [1, 2]", "train", "expected a mapping, got a list"),
    ("launch: {deepspeed: true}", "launch.deepspeed", "expected a mapping, got bool"),
    ("model: {name_or_path: m, config: [1]}", "model.config", "expected a mapping, got a list"),
    ("plugins: my.module", "plugins", "expected a list, got str"),
    ("run_name: null", "run_name", "expected str, got null"),
    ("train: {clip_grad_norm: big}", "train.clip_grad_norm", "expected float, got str"),
    ("model: {name_or_path: m, trust_remote_code: 1}", "model.trust_remote_code",
     "expected bool, got int"),
])
def test_wrong_type_names_file_key_and_kinds(write, yaml_tail, key, message, problem):
    text = "output_dir: out\n" + ONE_SOURCE + yaml_tail + "\n"
    if not yaml_tail.startswith("model:"):
        text += "model: {name_or_path: m}\n"
    line = problem(write("recipe.yaml", text))
    assert line == f"recipe.yaml: {key}: {message}"


def test_wrong_type_for_a_component(write, minimal, problem):
    line = problem(write("recipe.yaml", minimal + "optimizer: {lr: 1.0e-5}\n"))
    assert line.startswith("recipe.yaml: optimizer: expected a plugin name or a mapping with a 'name' key")


def test_checkpoint_every_rejects_a_word_that_is_not_epoch(write, minimal, problem):
    line = problem(write("recipe.yaml", minimal + "checkpoint: {every: weekly}\n"))
    assert line.startswith("recipe.yaml: checkpoint.every: expected ")
    assert "'epoch'" in line and "int" in line


# --- minimums ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("yaml_tail", "key", "message"), [
    ("train: {epochs: 0}", "train.epochs", "must be at least 1, got 0"),
    ("train: {max_steps: -3}", "train.max_steps", "must be at least 1, got -3"),
    ("launch: {machine_rank: -1}", "launch.machine_rank", "must be at least 0, got -1"),
    ("checkpoint: {every: 0}", "checkpoint.every", "must be at least 1, got 0"),
])
def test_value_below_minimum(write, minimal, yaml_tail, key, message, problem):
    line = problem(write("recipe.yaml", minimal + yaml_tail + "\n"))
    assert line == f"recipe.yaml: {key}: {message}"


def test_negative_fraction_is_below_minimum(write, problem):
    path = write("recipe.yaml", HEAD + "data:\n  mixture:\n    - {source: a, fraction: -0.5}\n")
    assert problem(path) == "recipe.yaml: data.mixture[0].fraction: must be at least 0, got -0.5"


def test_minimum_itself_is_allowed(write, minimal):
    recipe = load_recipe(write("recipe.yaml", minimal + "launch: {machine_rank: 0}\n")).recipe
    assert recipe.launch.machine_rank == 0


# --- Literal choices -----------------------------------------------------------------------------

def test_invalid_choice_suggests_the_close_one(write, minimal, problem):
    line = problem(write("recipe.yaml", minimal + "train: {loss_reduction: token_men}\n"))
    assert line == "recipe.yaml: train.loss_reduction: invalid value 'token_men'; did you mean 'token_mean'?"


def test_invalid_choice_with_nothing_close_lists_the_choices(write, minimal, problem):
    line = problem(write("recipe.yaml", minimal + "launch: {mixed_precision: maybe}\n"))
    assert line == "recipe.yaml: launch.mixed_precision: invalid value 'maybe'; expected one of: bf16, fp16, no"


def test_integer_choice_rejects_other_numbers_and_strings(write, minimal, problems):
    lines = problems(write("recipe.yaml", minimal + "launch: {deepspeed: {zero_stage: 4}}\n"))
    assert lines == ["recipe.yaml: launch.deepspeed.zero_stage: invalid value 4; expected one of: 0, 1, 2, 3"]
    lines = problems(write("recipe.yaml", minimal + "launch: {deepspeed: {zero_stage: '3'}}\n"))
    assert len(lines) == 1 and lines[0].startswith("recipe.yaml: launch.deepspeed.zero_stage: invalid value '3'")


# --- missing required keys -----------------------------------------------------------------------

def test_missing_output_dir(write, problem):
    line = problem(write("recipe.yaml", "model: {name_or_path: m}\n" + ONE_SOURCE))
    assert line.startswith("recipe.yaml: output_dir: missing required key (")


def test_missing_data(write, problem):
    line = problem(write("recipe.yaml", HEAD))
    assert line.startswith("recipe.yaml: data: missing required key (")


def test_missing_mixture(write, problem):
    line = problem(write("recipe.yaml", HEAD + "data: {max_seq_length: 64}\n"))
    assert line.startswith("recipe.yaml: data.mixture: missing required key (")


def test_missing_source_in_a_mixture_entry(write, problem):
    line = problem(write("recipe.yaml", HEAD + "data:\n  mixture:\n    - {fraction: 1.0}\n"))
    assert line.startswith("recipe.yaml: data.mixture[0].source: missing required key (")


# --- impossible combinations (checks.py) ---------------------------------------------------------

@pytest.mark.parametrize("entry", ["{source: a, fraction: 0.5, count: 10}", "{source: a}"])
def test_mixture_entry_needs_exactly_one_of_fraction_and_count(write, entry, problem):
    line = problem(write("recipe.yaml", HEAD + f"data:\n  mixture:\n    - {entry}\n"))
    assert line.startswith("recipe.yaml: data.mixture[0]: set exactly one of fraction")


def test_empty_mixture(write, problem):
    line = problem(write("recipe.yaml", HEAD + "data: {mixture: []}\n"))
    assert line.startswith("recipe.yaml: data.mixture: is empty")


@pytest.mark.parametrize("model", [
    "{name_or_path: m, config: {model_type: llama}}",
    "{revision: main}",
])
def test_model_needs_exactly_one_of_name_or_path_and_config(write, model, problems):
    text = f"output_dir: out\nmodel: {model}\ntokenizer: {{name_or_path: tok}}\n" + ONE_SOURCE
    lines = problems(write("recipe.yaml", text))
    assert lines == ["recipe.yaml: model: set exactly one of model.name_or_path (load weights) "
                     "or model.config (random init)"]


def test_model_config_needs_model_type_and_a_tokenizer(write, problems):
    lines = problems(write("recipe.yaml", "output_dir: out\nmodel: {config: {hidden_size: 8}}\n" + ONE_SOURCE))
    assert len(lines) == 2
    assert lines[0].startswith("recipe.yaml: model.config: needs a model_type")
    assert lines[1].startswith("recipe.yaml: tokenizer.name_or_path: missing")


def test_model_config_with_tokenizer_loads(write):
    recipe = load_recipe(write("recipe.yaml", """\
output_dir: out
model: {config: {model_type: llama, hidden_size: 8}}
tokenizer: {name_or_path: tok}
""" + ONE_SOURCE)).recipe
    assert recipe.model.config == {"model_type": "llama", "hidden_size": 8}


def test_offload_params_needs_zero_stage_3(write, minimal, problem):
    line = problem(write("recipe.yaml", minimal + "launch: {deepspeed: {offload_params: true}}\n"))
    assert line == "recipe.yaml: launch.deepspeed.offload_params: needs launch.deepspeed.zero_stage=3"
    ok = write("ok.yaml", minimal + "launch: {deepspeed: {offload_params: true, zero_stage: 3}}\n")
    assert load_recipe(ok).recipe.launch.deepspeed.offload_params is True


@pytest.mark.parametrize("kernel", ["flash_attention_2", "flash_attention_3", "flex_attention"])
def test_a_gpu_only_attention_kernel_is_refused_on_the_cpu(write, minimal, kernel, problem):
    """check says so before train would (flash-attn needs CUDA; flex attention has no CPU backward)."""
    with_kernel = minimal.replace("  name_or_path: tiny-model\n", f"  name_or_path: tiny-model\n  attn_implementation: {kernel}\n")
    line = problem(write("recipe.yaml", with_kernel + "launch: {device: cpu}\n"))
    assert line.startswith(f"recipe.yaml: model.attn_implementation: {kernel} trains on CUDA GPUs only and "
                           "launch.device is cpu")
    for device in ("cuda", "auto"):  # a GPU machine's problem, checked there before anything loads
        ok = write("ok.yaml", with_kernel + f"launch: {{device: {device}}}\n")
        assert load_recipe(ok).recipe.model.attn_implementation == kernel


@pytest.mark.parametrize("rank", [2, 3])
def test_machine_rank_must_be_below_num_machines(write, minimal, rank, problem):
    path = write("recipe.yaml", minimal + f"launch: {{num_machines: 2, num_processes: 2, machine_rank: {rank}}}\n")
    assert problem(path) == "recipe.yaml: launch.machine_rank: must be below launch.num_machines (2)"


def test_num_processes_must_split_evenly_over_machines(write, minimal, problem):
    line = problem(write("recipe.yaml", minimal + "launch: {num_machines: 2, num_processes: 3}\n"))
    assert line.startswith("recipe.yaml: launch.num_processes: 3 processes cannot be split evenly over 2 machines")
    ok = write("ok.yaml", minimal + "launch: {num_machines: 2, num_processes: 4, machine_rank: 1}\n")
    assert load_recipe(ok).recipe.launch.num_processes == 4


# --- several problems at once --------------------------------------------------------------------

def test_all_schema_problems_are_reported_together(write, problems):
    lines = problems(write("recipe.yaml", """\
model: {name_or_path: m, dtype: bf16}
data:
  mixture:
    - {fraction: 1.0, sorce: a.jsonl}
train:
  epochs: 0
  per_device_batch_size: four
seedd: 3
"""))
    assert sorted(lines) == sorted([
        "recipe.yaml: output_dir: missing required key (Where the checkpoint, metrics and resolved recipe go.)",
        "recipe.yaml: model.dtype: invalid value 'bf16'; did you mean 'bfloat16'?",
        "recipe.yaml: data.mixture[0].sorce: unknown key; did you mean 'source'?",
        "recipe.yaml: data.mixture[0].source: missing required key (Local file/folder or hub dataset name.)",
        "recipe.yaml: train.epochs: must be at least 1, got 0",
        "recipe.yaml: train.per_device_batch_size: expected int, got str",
        "recipe.yaml: seedd: unknown key; did you mean 'seed'?",
    ])


def test_all_combination_problems_are_reported_together(write, problems):
    lines = problems(write("recipe.yaml", """\
output_dir: out
model: {name_or_path: m}
data:
  mixture:
    - {source: a, fraction: 1.0, count: 3}
    - {source: b}
launch: {num_machines: 2, num_processes: 3, machine_rank: 2, deepspeed: {offload_params: true}}
"""))
    keys = [line.split(": ")[1] for line in lines]
    assert sorted(keys) == sorted([
        "data.mixture[0]", "data.mixture[1]", "launch.machine_rank", "launch.num_processes",
        "launch.deepspeed.offload_params",
    ])
    assert all(line.startswith("recipe.yaml: ") for line in lines)
