"""`seqtune import open-instruct`: commands (argument lists and shell scripts) to recipes, flag by flag."""
from __future__ import annotations

import re
import shlex
from dataclasses import asdict
from pathlib import Path

import pytest

from framework.config import load_recipe
from framework.errors import UserError
from framework.importers.commands import parse_command, words_of_script
from framework.importers.open_instruct import SCRIPTS, read, render
from seqtune_testing import REPO, error_lines

SEED = REPO / "recipes/tulu3/gemma2-2b-sft.yaml"


def seed_command() -> str:
    """The command in the seed recipe's header, as a shell script."""
    header = [line[4:] for line in SEED.read_text().splitlines() if line.startswith("#   ")]
    return "\n".join(line for line in header if "seqtune check" not in line)


def imported(text: str, tmp_path: Path, name: str = "recipe.yaml") -> tuple[Path, list[str]]:
    command = parse_command(words_of_script(text, "command.sh"), SCRIPTS)
    draft = read(command)
    path = tmp_path / name
    path.write_text(render(draft, command, str(path)))
    return path, draft.warnings


def test_the_seed_command_imports_to_the_shipped_seed_recipe(tmp_path):
    path, warnings = imported(seed_command(), tmp_path)
    assert asdict(load_recipe(path).recipe) == asdict(load_recipe(SEED).recipe)
    assert warnings == ["--use_slow_tokenizer: ignored by open-instruct itself (its TokenizerConfig says so: the "
                        "fast tokenizer is always loaded)"]
    text = path.read_text()
    assert "  max_seq_length: 2048                     # --max_seq_length" in text
    assert "# Not carried over (check these before you train):" in text and "--use_slow_tokenizer" in text


def test_a_script_with_continuations_and_variables_expands_them(tmp_path, monkeypatch):
    monkeypatch.setenv("NUM_GPUS", "8")
    script = """#!/bin/bash
MODEL=meta-llama/Llama-3.1-8B
LR=5e-6
accelerate launch --num_processes $NUM_GPUS \\
    open_instruct/finetune.py --model_name_or_path ${MODEL} --learning_rate $LR \\
    --dataset_mixer_list allenai/tulu-3-sft-mixture 1000 data/extra.jsonl 0.5 --max_seq_length 4096
"""
    path, _ = imported(script, tmp_path)
    recipe = load_recipe(path).recipe
    assert recipe.launch.num_processes == 8 and recipe.model.name_or_path == "meta-llama/Llama-3.1-8B"
    assert recipe.optimizer.options["lr"] == 5e-6 and recipe.tokenizer.name_or_path == "meta-llama/Llama-3.1-8B"
    # open-instruct's 1000 is a count of rows, its 0.5 a share: both kept apart
    assert [(e.count, e.fraction) for e in recipe.data.mixture] == [(1000, None), (None, 0.5)]
    assert recipe.model.attn_implementation == "flash_attention_2" and recipe.optimizer.options["fused"]
    assert recipe.train.epochs == 2 and recipe.train.per_device_batch_size == 8  # open-instruct's defaults


def test_unknown_flags_are_one_error_each_with_a_suggestion():
    command = parse_command(["accelerate", "launch", "--num_proceses", "2", "open_instruct/finetune.py",
                             "--learnin_rate", "1e-5", "--lora_rnk", "8"], SCRIPTS)
    with pytest.raises(UserError) as error:
        read(command)
    assert len(error.value.problems) == 3
    assert "--num_proceses: not a flag of accelerate launch" in error.value.problems[0]
    assert "did you mean 'learning_rate'" in error.value.problems[1]


def test_an_unset_variable_names_the_script_and_line():
    with pytest.raises(UserError, match=r"run\.sh:2: \$OUT is not set"):
        words_of_script("MODEL=x\naccelerate launch open_instruct/finetune.py --output_dir $OUT\n", "run.sh")


@pytest.mark.parametrize("flags, key, value", [
    (["--use_lora", "--lora_rank", "8"], "lora", {"r": 8, "alpha": 16.0, "dropout": 0.1}),
    (["--clip_grad_norm", "-1"], "train.clip_grad_norm", None),
    (["--checkpointing_steps", "500"], "checkpoint.every", 500),
    (["--lr_scheduler_type", "cosine"], "scheduler.name", "cosine"),
    (["--gradient_checkpointing", "true"], "model.gradient_checkpointing", True),
])
def test_flags_map_to_recipe_keys(flags, key, value):
    draft = read(parse_command(["open_instruct/finetune.py", "--model_name_or_path", "m", *flags], SCRIPTS))
    assert draft.values[key] == value


def test_a_dpo_command_is_a_preference_recipe_with_a_cached_reference(tmp_path):
    script = ("accelerate launch --num_processes 8 --use_deepspeed --deepspeed_config_file "
              "configs/ds_configs/stage3_offloading_accelerate.conf open_instruct/dpo_tune_cache.py "
              "--model_name_or_path allenai/Llama-3.1-Tulu-3-8B-SFT --dataset_mixer_list "
              "allenai/llama-3.1-tulu-3-8b-preference-mixture 1.0 --dpo_loss_type dpo_norm --dpo_beta 5 "
              "--reduce_loss sum --max_seq_length 2048")
    path, warnings = imported(script, tmp_path)
    recipe = load_recipe(path).recipe
    assert recipe.objective.name == "dpo" and recipe.objective.options == {"loss": "dpo_norm", "beta": 5.0,
                                                                           "reference": "cached"}
    assert recipe.data.mixture[0].format.name == "preference" and recipe.train.loss_reduction == "mean"
    assert (recipe.launch.deepspeed.zero_stage, recipe.launch.deepspeed.offload_params) == (3, True)
    assert any("--reduce_loss: ignored by open-instruct's DPO scripts" in w for w in warnings)


def test_the_cli_writes_the_recipe_and_says_what_was_not_carried_over(seqtune, tmp_path):
    out = tmp_path / "imported.yaml"
    done = seqtune("import", "open-instruct", "-o", str(out), "--", "python", "open_instruct/finetune.py",
                   "--model_name_or_path", "m", "--push_to_hub", "--max_seq_length", "512")
    assert done.returncode == 0, done.stderr
    assert "--push_to_hub: not carried over: seqtune never uploads" in done.stderr
    assert "#   - --push_to_hub: not carried over" in out.read_text()
    bad = seqtune("import", "open-instruct", "--", "open_instruct/finetune.py", "--nope", "1")
    assert bad.returncode == 2 and "--nope: not a flag of finetune.py" in bad.stderr and "Traceback" not in bad.stderr


FIXTURES = REPO / "tests/fixtures/open_instruct"


def imported_fixture(name: str, tmp_path: Path):
    path, warnings = imported((FIXTURES / f"{name}.sh").read_text(), tmp_path, f"{name}.yaml")
    return load_recipe(path).recipe, warnings, path


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("*.sh")))
def test_every_real_command_imports_to_a_recipe_that_checks(name, tmp_path, seqtune):
    """Valid as seqtune sees it: the only problems left are files of the author's machine."""
    recipe, _, path = imported_fixture(name, tmp_path)
    assert recipe.data.mixture and recipe.output_dir
    checked = seqtune("check", str(path))
    problems = error_lines(checked.stderr)
    assert checked.returncode == 0 or all("no such" in line for line in problems), checked.stderr[-2000:]


def test_what_each_real_command_covers_is_carried_over(tmp_path):
    lora, _, _ = imported_fixture("llama2-7b-lora-stage3", tmp_path)
    assert (lora.lora.r, lora.lora.alpha, lora.launch.deepspeed.zero_stage) == (64, 16.0, 3)
    assert [c.name for c in lora.logging.loggers] == ["rich", "jsonl", "tensorboard"]
    assert lora.data.mixture[0].source == "oasst1_data.jsonl"  # --train_file: every row of one file
    qlora, warnings, _ = imported_fixture("llama2-70b-qlora", tmp_path)
    assert qlora.lora.r == 64 and qlora.model.quantization.method == "nf4"
    assert (qlora.model.quantization.double_quant, qlora.model.quantization.compute_dtype) == (True, "bfloat16")
    assert not any("--use_qlora" in w for w in warnings)
    dpo, _, _ = imported_fixture("tulu3-llama31-70b-dpo-offload", tmp_path)
    assert dpo.objective.name == "dpo" and dpo.launch.deepspeed.offload_optimizer
    # open-instruct's preference tokenization trains every assistant turn; so does the shipped Tulu 3 recipe
    assert dpo.data.train_on == "assistant" == load_recipe(REPO / "recipes/tulu3/llama3.1-8b-dpo.yaml").recipe.data.train_on
    machines, _, _ = imported_fixture("tulu3-llama31-70b-sft", tmp_path)
    assert machines.launch.num_machines > 1 and machines.launch.main_process_port == 29400
    zero2, _, _ = imported_fixture("olmoe-1b-sft-zero2-mason", tmp_path)
    assert zero2.launch.deepspeed.zero_stage == 2 and zero2.train.gradient_accumulation_steps == 1
    assert "bsz_128" in zero2.run_name  # $((8 * 8 * 2 * $grad_accu_steps)) evaluated


def test_amounts_and_spellings_read_as_open_instructs_parser_reads_them():
    draft = read(parse_command(["open_instruct/finetune.py", "--model_name", "m", "--no_use_flash_attn",
                                "--dataset_mixer_list", "a/b", "1", "c/d", "2.0", "e/f", "0.25"], SCRIPTS))
    # above 1: that many rows ("2.0" is two); up to 1: a share ("1" is every row)
    assert draft.values["data.mixture"] == [{"source": "a/b", "fraction": 1.0}, {"source": "c/d", "count": 2},
                                            {"source": "e/f", "fraction": 0.25}]
    assert draft.values["model.name_or_path"] == "m" and draft.values["model.attn_implementation"] == "sdpa"
    assert "--model_name: read as --model_name_or_path" in draft.warnings[0]


def test_the_docs_example_error_is_what_the_importer_prints(seqtune, tmp_path):
    """docs/importing.md shows a command and its error: the command errors, with exactly that message,
    and the shortened flag the docs then mention is read as the flag it starts, as they say."""
    doc = (REPO / "docs/importing.md").read_text()
    command, shown = re.search(r"```console\n\$ (seqtune import open-instruct .*)\n(error: .*)\n```", doc).groups()
    words = shlex.split(command)[1:]
    words[words.index("-o") + 1] = str(tmp_path / "my-run.yaml")
    failed = seqtune(*words)
    assert failed.returncode == 2 and shown in failed.stderr.splitlines(), failed.stderr
    assert not (tmp_path / "my-run.yaml").exists()
    prefix = seqtune(*[w.replace("--learnign_rate", "--learning_rat") for w in words])
    assert prefix.returncode == 0 and "--learning_rat: read as --learning_rate" in prefix.stderr, prefix.stderr
