"""The CLI through its real console script: exit codes, messages, and no half-written output."""
from __future__ import annotations

import subprocess
import sys

import pytest

QUICKSTART = "recipes/quickstart.yaml"
TULU = "recipes/tulu3/gemma2-2b-sft.yaml"


def test_help_lists_the_commands(seqtune):
    for flag in ("--help", "-h"):
        result = seqtune(flag)
        assert result.returncode == 0
        for command in ("train", "check", "plugins"):
            assert command in result.stdout


def test_plugins_lists_every_builtin_with_family_and_distribution(seqtune):
    result = seqtune("plugins")
    assert result.returncode == 0
    for name in ("json", "hub", "messages", "right", "none", "adamw", "linear", "rich", "jsonl",
                 "wandb", "tensorboard"):
        assert f" {name} " in result.stdout
    assert "plugins.optimizers" in result.stdout and "seqtune" in result.stdout


def test_check_prints_the_resolved_recipe_with_sources(seqtune):
    result = seqtune("check", QUICKSTART, "train.max_steps=3")
    assert result.returncode == 0, result.stderr
    assert "max_steps: 3  (override train.max_steps=3)" in result.stdout
    assert 'loss_reduction: "token_mean"' in result.stdout and "deepspeed: null" in result.stdout
    assert "(default)" in result.stdout and "valid recipe" in result.stdout
    assert "truncation: right <- plugins.truncation, seqtune" in result.stdout  # who provides each choice


def test_check_accepts_the_tulu_recipe_without_importing_heavy_packages(repo):
    code = ("import sys; from framework.cli import app\n"
            f"try: app(['check', '{TULU}'])\n"
            "except SystemExit as e: assert e.code in (0, None), e.code\n"
            "heavy = [m for m in ('torch', 'transformers', 'deepspeed', 'flash_attn', 'datasets') "
            "if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "valid recipe" in result.stdout


@pytest.mark.parametrize("argv", [["--help"], ["plugins"], ["check", "missing.yaml"]])
def test_fast_commands_do_not_import_torch_or_transformers(repo, argv):
    code = ("import sys; from framework.cli import app\n"
            f"try: app({argv!r})\n"
            "except SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr


@pytest.mark.slow
def test_invalid_recipe_lists_every_problem_and_exits_2(seqtune, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("output_dir: out\nmodel: {name_or_path: m, atn_implementation: sdpa}\n"
                      "data: {mixture: [{source: a.jsonl, fraction: 1.0}], max_seq_lenght: 9}\n"
                      "train: {loss_reduction: summ}\n")
    for command in ("check", "train"):
        result = seqtune(command, recipe, cwd=tmp_path)
        assert result.returncode == 2
        assert "4 problems" in result.stderr
        assert "data.mixture[0].source: no such file or folder: a.jsonl" in result.stderr
        assert "did you mean 'attn_implementation'?" in result.stderr
        assert "data.max_seq_lenght" in result.stderr and "did you mean 'sum'?" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout
        assert not (tmp_path / "out").exists()


def test_unknown_plugin_option_is_a_recipe_error(seqtune, tmp_path):
    result = seqtune("check", QUICKSTART, "optimizer.learning_rate=1e-3", "logging.loggers=[rich, csv]")
    assert result.returncode == 2
    assert "optimizer.learning_rate: unknown option" in result.stderr
    assert "unknown logger 'csv'" in result.stderr


@pytest.mark.slow
def test_train_without_gpu_or_flash_attn_stops_before_any_work(seqtune, tmp_path):
    result = seqtune("train", TULU, f"output_dir={tmp_path / 'out'}", f"data.mix_dir={tmp_path / 'mix'}")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip().startswith("•")]
    flash = [line for line in lines if "flash_attention_2" in line]
    assert len(flash) == 1 and "override model.attn_implementation=sdpa" in flash[0]
    assert any("launch.num_processes=4" in line and "launch.device=cpu" in line for line in lines)
    assert not (tmp_path / "out").exists() and not (tmp_path / "mix").exists()
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_bad_data_row_is_named_and_nothing_is_written(seqtune, repo, tmp_path):
    data = tmp_path / "rows.jsonl"
    good = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'
    data.write_text(good + "\n" + good[:-2] + "\n")
    out = tmp_path / "out"
    result = seqtune("train", repo / QUICKSTART, f"output_dir={out}", "eval=null", f"tokenizer.name_or_path="
                     f"{repo / 'recipes/quickstart/tokenizer'}",
                     f"data.mixture=[{{source: {data}, fraction: 1.0}}]", cwd=tmp_path)
    assert result.returncode == 2
    assert f"{data.name}:2: invalid JSON line" in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_uncached_hub_dataset_offline_is_one_clear_line(seqtune, tmp_path):
    out = tmp_path / "out"
    result = seqtune("train", QUICKSTART, f"output_dir={out}",
                     "data.mixture=[{source: nobody/no-such-dataset, fraction: 1.0}]")
    assert result.returncode == 2
    assert "nobody/no-such-dataset: cannot load split 'train'" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


# --- what a new user reads: --help, one error, warnings ----------------------------------------------

HELP_COMMANDS = [[], ["train"], ["check"], ["plan"], ["report"], ["plugins"], ["import"], ["import", "open-instruct"]]


def help_text(seqtune, *command: str) -> str:
    import os

    os.environ["COLUMNS"] = "100"  # the width the issue was seen at; the subprocess inherits it
    try:
        result = seqtune(*command, "--help")
    finally:
        del os.environ["COLUMNS"]
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "seqtune")
def test_help_names_values_instead_of_python_types(seqtune, command):
    text = help_text(seqtune, *command)
    for placeholder in ("<bool>", "<str>", "<int>", "<path>", "<list[str]>"):
        assert placeholder not in text, (placeholder, text)
    if command in (["plan"], ["check"], ["train"]):
        assert " RECIPE [OVERRIDES...]" in text  # the usage line, in the help's own words
    if command == ["plan"]:
        assert "--samples" in text and " N " in text and " PATH " in text


def test_the_command_list_shows_each_summary_as_whole_sentences(seqtune):
    """A docstring's line breaks are not the help's: no line of the list ends a few words in."""
    lines = help_text(seqtune).split("Commands")[1].split("╰")[0].splitlines()[1:]
    rows = [line.strip("│").rstrip() for line in lines]
    width = max(len(row) for row in rows)
    for this, following in zip(rows, rows[1:]):
        continues = following[:3].strip() == ""  # the next line carries on this command's summary
        assert not continues or len(this) > width - 20, (this, rows)


def test_report_help_names_the_plot_extra_whole(seqtune):
    assert "pip install 'seqtune[plot]'" in " ".join(help_text(seqtune, "report").replace("│", " ").split())


def test_one_problem_is_one_line(seqtune):
    result = seqtune("check", QUICKSTART, "train.max_stepz=3")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: override train.max_stepz=3: train.max_stepz: unknown key; "
                                          "did you mean 'max_steps'?"]


@pytest.mark.slow
def test_check_samples_warns_in_one_line_when_max_seq_length_cuts_more_than_1_percent(seqtune, tmp_path):
    result = seqtune("check", QUICKSTART, "--samples", "1", "data.max_seq_length=48", f"data.cache_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    cut = [line for line in result.stderr.splitlines() if "cuts" in line]
    assert cut == ["warning: data.max_seq_length 48 cuts 5.7% of the trainable tokens (145 of 2,000 rows truncated, "
                   "0 dropped by truncation); data.max_seq_length=68 keeps 99% or more"]
    kept = seqtune("check", QUICKSTART, "--samples", "1", f"data.cache_dir={tmp_path}")
    assert kept.returncode == 0 and "cuts" not in kept.stderr


@pytest.mark.slow
def test_a_run_without_deepspeed_is_not_told_about_deepspeeds_device(repo):
    """accelerate imports DeepSpeed to unwrap a model (every checkpoint does): on a machine without a
    GPU DeepSpeed then says it chose the CPU, on stdout."""
    code = ("import framework.cli, torch\n"
            "from accelerate.utils import extract_model_from_parallel\n"
            "extract_model_from_parallel(torch.nn.Linear(1, 1))\n"
            "import deepspeed\n"
            "print('unwrapped')")
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "unwrapped" in result.stdout, result.stderr[-2000:]
    assert "Setting accelerator" not in result.stdout + result.stderr


@pytest.mark.slow
def test_train_warns_in_one_line_when_max_seq_length_cuts_more_than_1_percent(seqtune, tmp_path):
    result = seqtune("train", QUICKSTART, f"output_dir={tmp_path / 'out'}", "train.max_steps=1", "eval=null",
                     "data.max_seq_length=48", f"data.cache_dir={tmp_path / 'cache'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line for line in result.stderr.splitlines() if "cuts" in line] == [
        "warning: data.max_seq_length 48 cuts 5.7% of the trainable tokens (145 of 2,000 rows truncated, 0 dropped "
        "by truncation); data.max_seq_length=68 keeps 99% or more"]
