"""A corpus of bad recipes: each is refused by the real CLI (in process) with exit code 2, no traceback,
one line per problem naming the file (or the override) and the key, and nothing in output_dir; and
recipes with many mistakes show every one of them in the first run.

`seqtune check` is static (no torch), so this whole corpus runs in the fast set.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from framework.cli import app
from seqtune_testing import TINY_MODEL, error_lines

REPO = Path(__file__).resolve().parents[3]
BASE = f"""\
output_dir: out
{TINY_MODEL}data:
  mixture: [{{source: rows.jsonl, fraction: 1.0}}]
  max_seq_length: 64
optimizer: adamw
scheduler: linear
launch: {{device: cpu}}
logging: {{loggers: [jsonl]}}
"""
ROW = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'


def case(name: str, expected: list[str], *, recipe: str = BASE, overrides: tuple[str, ...] = (),
         files: dict[str, str] | None = None):
    return pytest.param(recipe, overrides, files or {}, expected, id=name)


CASES = [
    # the recipe file itself
    case("yaml-syntax", ["recipe.yaml: invalid YAML at line"], recipe="output_dir: out\nseed: [1,\n"),
    case("not-a-mapping", ["recipe.yaml: a recipe must be a mapping of keys"], recipe="- a\n- b\n"),
    case("unknown-top-key", ["recipe.yaml: trian: unknown key; did you mean 'train'?"], recipe=BASE + "trian: {}\n"),
    case("unknown-nested-key", ["recipe.yaml: train.max_step: unknown key; did you mean 'max_steps'?"],
         recipe=BASE + "train: {max_step: 3}\n"),
    case("wrong-type", ["recipe.yaml: train.epochs: expected int, got str"], recipe=BASE + "train: {epochs: two}\n"),
    case("bad-choice", ["recipe.yaml: train.loss_reduction: invalid value 'summ'; did you mean 'sum'?"],
         recipe=BASE + "train: {loss_reduction: summ}\n"),
    case("below-minimum", ["recipe.yaml: train.per_device_batch_size: must be at least 1, got 0"],
         recipe=BASE + "train: {per_device_batch_size: 0}\n"),
    case("missing-output-dir", ["recipe.yaml: output_dir: missing required key"],
         recipe=BASE.replace("output_dir: out\n", "")),
    case("missing-data", ["recipe.yaml: data: missing required key"],
         recipe="output_dir: out\nmodel: {name_or_path: m}\n"),
    case("fraction-and-count", ["recipe.yaml: data.mixture[0]: set exactly one of fraction"],
         recipe=BASE.replace("fraction: 1.0", "fraction: 1.0, count: 3")),
    case("neither-fraction-nor-count", ["recipe.yaml: data.mixture[0]: set exactly one of fraction"],
         recipe=BASE.replace(", fraction: 1.0", "")),
    case("lora-rank-zero", ["recipe.yaml: lora.r: must be at least 1, got 0"], recipe=BASE + "lora: {r: 0}\n"),
    case("bad-precision", ["recipe.yaml: launch.mixed_precision: invalid value 'bf32'"],
         recipe=BASE.replace("launch: {device: cpu}", "launch: {device: cpu, mixed_precision: bf32}")),
    # extends, interpolation, overrides
    case("extends-missing", ["recipe.yaml: extends: no such file 'base.yaml'"],
         recipe="extends: base.yaml\n" + BASE),
    case("extends-cycle", ["a.yaml: extends: circular extends"], recipe="extends: a.yaml\n" + BASE,
         files={"a.yaml": "extends: recipe.yaml\n"}),
    case("extends-bad-yaml", ["base.yaml: invalid YAML at line"], recipe="extends: base.yaml\n" + BASE,
         files={"base.yaml": "seed: [\n"}),
    case("interpolation", ["recipe.yaml: run_name: cannot resolve interpolation"], recipe=BASE + "run_name: ${nope}\n"),
    case("missing-value", ["recipe.yaml: run_name: missing value (???)"], recipe=BASE + "run_name: ???\n"),
    case("override-no-equals", ["override 'train.max_steps': expected key=value"], overrides=("train.max_steps",)),
    case("override-bad-index", ["override 'data.mixture[5].fraction=0.5'"], overrides=("data.mixture[5].fraction=0.5",)),
    case("override-wrong-type", ["override train.epochs=x: train.epochs: expected int, got str"],
         overrides=("train.epochs=x",)),
    # combinations
    case("model-twice", ["recipe.yaml: model: set exactly one of model.name_or_path"],
         recipe=BASE.replace("model:\n", "model:\n  name_or_path: x\n")),
    case("config-model-without-tokenizer", ["recipe.yaml: tokenizer.name_or_path: missing"],
         recipe=BASE.replace(f"tokenizer: {{name_or_path: {REPO / 'recipes/quickstart/tokenizer'}}}\n", "")),
    case("machine-rank", ["override launch.machine_rank=2: launch.machine_rank: must be below launch.num_machines"],
         overrides=("launch.machine_rank=2",)),
    case("offload-without-stage-3", ["launch.deepspeed.offload_params: needs launch.deepspeed.zero_stage=3"],
         overrides=("launch.deepspeed={zero_stage: 2, offload_params: true}",)),
    # plugins: names, options, option values
    case("unknown-optimizer", ["override optimizer=adamm: optimizer: unknown optimizer 'adamm'; did you mean 'adamw'?"],
         overrides=("optimizer=adamm",)),
    case("unknown-option", ["optimizer.betaz: unknown option; did you mean 'betas'?"], overrides=("optimizer.betaz=1",)),
    case("negative-lr", ["override optimizer.lr=-5e-6: optimizer.lr: must be above 0, got -5e-06"],
         overrides=("optimizer.lr=-5e-6",)),
    case("betas-out-of-range", ["optimizer.betas: must be at least 0 and below 1, got [0.9, 1.5]"],
         overrides=("optimizer.betas=[0.9, 1.5]",)),
    case("fused-and-foreach", ["optimizer.fused: set fused or foreach to true, not both"],
         overrides=("optimizer={name: adamw, fused: true, foreach: true}",)),
    case("negative-warmup", ["scheduler.warmup_ratio: must be between 0 and 1, got -0.5"],
         overrides=("scheduler.warmup_ratio=-0.5",)),
    case("two-warmups", ["scheduler: set warmup_ratio or warmup_steps, not both"],
         overrides=("scheduler={name: linear, warmup_ratio: 0.1, warmup_steps: 3}",)),
    case("unknown-scheduler", ["scheduler: unknown scheduler 'cosin'; did you mean 'cosine'?"],
         overrides=("scheduler=cosin",)),
    case("unknown-truncation", ["data.truncation: unknown truncation strategy 'rigth'"],
         overrides=("data.truncation=rigth",)),
    case("packing-multiple-zero", ["data.packing.pad_to_multiple_of: must be at least 1, got 0"],
         overrides=("data.packing={name: none, pad_to_multiple_of: 0}",)),
    case("unknown-logger", ["logging.loggers[0]: unknown logger 'jsonll'; did you mean 'jsonl'?"],
         overrides=("logging.loggers=[jsonll]",)),
    case("unknown-format", ["data.mixture[0].format: unknown dataset format 'mesages'"],
         overrides=("data.mixture[0].format=mesages",)),
    case("unknown-template", ["tokenizer.chat_template: unknown chat template 'chatlm'; did you mean 'chatml'?"],
         overrides=("tokenizer.chat_template=chatlm",)),
    case("plugin-module", ["plugins[0]: cannot import plugin module 'no_such_plugin_module'",
                           "plugin names and options are not checked until it is fixed"],
         overrides=("plugins=[no_such_plugin_module]",)),
    # local paths that must exist
    case("missing-source", ["override data.mixture[0].source=gone.jsonl: data.mixture[0].source: no such file or folder: "
                            "gone.jsonl"], overrides=("data.mixture[0].source=gone.jsonl",)),
    case("missing-tokenizer", ["tokenizer.name_or_path: no such directory: ./no/tokenizer"],
         overrides=("tokenizer.name_or_path=./no/tokenizer",)),
    case("missing-template-file", ["tokenizer.chat_template: no such file: my_template.jinja"],
         overrides=("tokenizer.chat_template=my_template.jinja",)),
    case("missing-resume", ["checkpoint.resume: no such checkpoint folder: out/checkpoints/step-00000003"],
         overrides=("checkpoint.resume=out/checkpoints/step-00000003",)),
    case("custom-code-untrusted", ["model.name_or_path: ./custom holds custom model code (auto_map in config.json)",
                                   "model.trust_remote_code=true"],
         overrides=("model={name_or_path: ./custom}",),
         files={"custom/config.json": '{"model_type": "acme", "auto_map": {"AutoConfig": "configuration_acme.C"}}'}),
    case("missing-deepspeed-file", ["launch.deepspeed.config_file: no such file: ds.json"],
         overrides=("launch.deepspeed={config_file: ds.json}",)),
]


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rows.jsonl").write_text(ROW * 4)
    return tmp_path


def run(here: Path, command: str, recipe: str, overrides=(), files: dict[str, str] | None = None):
    (here / "recipe.yaml").write_text(textwrap.dedent(recipe))
    for name, text in (files or {}).items():
        (here / name).parent.mkdir(parents=True, exist_ok=True)
        (here / name).write_text(text)
    return CliRunner().invoke(app, [command, "recipe.yaml", *overrides])


def assert_refused(result, expected: list[str], here: Path) -> list[str]:
    """Exit 2, no traceback, one line per problem, each expected fragment in one of them."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stderr + result.stdout and result.stdout == ""
    lines = error_lines(result.stderr)
    for fragment in expected:
        assert any(fragment in line for line in lines), (fragment, lines)
    assert not (here / "out").exists()
    return lines


@pytest.mark.parametrize("recipe, overrides, files, expected", CASES)
def test_each_bad_recipe_is_one_clean_line(here, recipe, overrides, files, expected):
    assert_refused(run(here, "check", recipe, overrides, files), expected, here)


def test_the_corpus_is_large():
    assert len(CASES) >= 40


MANY = BASE.replace("max_seq_length: 64", "max_seq_length: 0").replace("optimizer: adamw\nscheduler: linear\n", "") \
    + textwrap.dedent("""\
    trian: {epochs: 2}
    train: {loss_reduction: summ}
    optimizer: {name: adamw, lr: -1.0e-5, betas: [0.9, 1.5], fused: true}
    scheduler: {name: linear, warmup_ratio: -0.5}
    checkpoint: {resume: out/checkpoints/step-00000009}
    run_name: ${nowhere}
    """)
MANY_EXPECTED = [
    "recipe.yaml: data.max_seq_length: must be at least 1, got 0",
    "recipe.yaml: trian: unknown key; did you mean 'train'?",
    "recipe.yaml: train.loss_reduction: invalid value 'summ'",
    "override data.mixture[0].source=nowhere.jsonl: data.mixture[0].source: no such file or folder",
    "recipe.yaml: optimizer.lr: must be above 0",
    "recipe.yaml: optimizer.betas: must be at least 0 and below 1",
    "recipe.yaml: scheduler.warmup_ratio: must be between 0 and 1, got -0.5",
    "recipe.yaml: checkpoint.resume: no such checkpoint folder",
    "recipe.yaml: run_name: cannot resolve interpolation",
    "override launch.num_processes=3: launch.num_processes: 3 processes cannot be split evenly over 2 machines",
    "override logging.loggers=[rch]: logging.loggers[0]: unknown logger 'rch'; did you mean 'rich'?",
    "override data.truncation=rigth: data.truncation: unknown truncation strategy 'rigth'",
    "override 'seed': expected key=value",
]


@pytest.mark.parametrize("command", ["check", "plan", "train"])
def test_every_mistake_of_a_recipe_shows_in_the_first_run(here, command):
    overrides = ("data.mixture[0].source=nowhere.jsonl", "launch.num_machines=2", "launch.num_processes=3",
                 "logging.loggers=[rch]", "data.truncation=rigth", "seed")
    args = ["--gpu", "24"] if command == "plan" else []
    (here / "recipe.yaml").write_text(MANY)
    result = CliRunner().invoke(app, [command, "recipe.yaml", *overrides, *args])
    # a plan is for the machine that has the recipe's files: paths missing here are not its problems
    absent = ("no such file or folder", "no such checkpoint folder")
    expected = [line for line in MANY_EXPECTED if command != "plan" or not any(a in line for a in absent)]
    lines = assert_refused(result, expected, here)
    assert len(lines) == len(expected), lines  # and nothing spurious


def test_a_wrong_key_hides_no_other_check_and_causes_none(here):
    """A misspelt fraction is one problem, not also 'set exactly one of fraction or count'; the other
    entry's real combination problem still shows."""
    recipe = BASE.replace("mixture: [{source: rows.jsonl, fraction: 1.0}]",
                          "mixture: [{source: rows.jsonl, fracton: 1.0}, {source: rows.jsonl, fraction: 1, count: 2}]")
    lines = assert_refused(run(here, "check", recipe), [], here)
    assert lines == ["recipe.yaml: data.mixture[0].fracton: unknown key; did you mean 'fraction'?",
                     "recipe.yaml: data.mixture[1]: set exactly one of fraction (share of rows, 1.0 = all) or "
                     "count (number of rows)"]
