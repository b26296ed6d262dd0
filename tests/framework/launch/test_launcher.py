"""Multi-process runs on the CPU (gloo) through the real CLI, and the multi-machine launch commands."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from framework.config import load_recipe
from framework.launch.launcher import print_commands

ROWS = "data.mixture=[{source: recipes/quickstart/data/train.jsonl, count: 96}]"
COMMON = [ROWS, "train.max_steps=3", "train.per_device_batch_size=4", "train.loss_reduction=token_mean",
          "optimizer={name: sgd, lr: 0.5}", "scheduler=constant", "logging.loggers=[jsonl]", "launch.device=cpu"]


@pytest.mark.slow
def test_two_processes_equal_one_process_with_doubled_accumulation(seqtune, tmp_path):
    """Rank r takes micro-batches r, r+2, ...: two ranks accumulating 2 see exactly the micro-batches
    one process accumulating 4 sees, and token_mean makes their gradients the same."""
    two = seqtune("train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'two'}", *COMMON,
                  "launch.num_processes=2", "train.gradient_accumulation_steps=2", timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = seqtune("train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'one'}", *COMMON,
                  "train.gradient_accumulation_steps=4")
    assert one.returncode == 0, one.stderr[-3000:]
    want, got = load_file(str(tmp_path / "one/model.safetensors")), load_file(str(tmp_path / "two/model.safetensors"))
    assert max((want[k] - got[k]).abs().max().item() for k in want) < 1e-5
    assert two.stdout.count("done") == 1  # the launcher reports once, not every worker


@pytest.mark.slow
def test_a_worker_that_dies_stops_the_whole_run(seqtune, tmp_path, monkeypatch):
    (tmp_path / "die_plugin.py").write_text(
        "import os\nfrom framework import hookimpl\n\n@hookimpl\ndef seqtune_step_end(step):\n"
        "    if step == 2 and os.environ.get('RANK') == '0':  # hooks run on the main process\n        os._exit(3)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    result = seqtune("train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'out'}", *COMMON,
                     "train.max_steps=50", "launch.num_processes=2", "plugins=[die_plugin]", timeout=240)
    assert result.returncode != 0
    assert not (tmp_path / "out/model.safetensors").exists()


def test_print_launch_gives_each_machine_its_command(tmp_path, repo):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text((repo / "recipes/tulu3/gemma2-2b-sft.yaml").read_text())
    overrides = ["launch.num_machines=2", "launch.num_processes=8", "launch.main_process_ip=10.1.2.3"]
    loaded = load_recipe(recipe, overrides)
    lines = print_commands(loaded.recipe, "recipe.yaml", overrides)
    seqtune_lines = [shlex.split(line) for line in lines if line.startswith("seqtune ")]
    launcher_lines = [shlex.split(line) for line in lines if line.startswith("SEQTUNE_WORKER=1 accelerate launch")]
    assert len(seqtune_lines) == len(launcher_lines) == 2
    for rank, (seqtune, launcher) in enumerate(zip(seqtune_lines, launcher_lines)):
        assert seqtune[:3] == ["seqtune", "train", "recipe.yaml"] and seqtune[-1] == f"launch.machine_rank={rank}"
        options = dict(zip(launcher[3::2], launcher[4::2]))
        assert options["--num_processes"] == "8" and options["--num_machines"] == "2"
        assert options["--machine_rank"] == str(rank) and options["--main_process_ip"] == "10.1.2.3"
        assert options["--main_process_port"] == "29400" and options["--mixed_precision"] == "bf16"
        assert launcher[-6:-3] == ["framework.cli", "train", "recipe.yaml"] or "framework.cli" in launcher


def test_print_launch_through_the_cli_needs_no_gpu(seqtune):
    result = seqtune("train", "recipes/tulu3/gemma2-2b-sft.yaml", "--print-launch")
    assert result.returncode == 0, result.stderr
    assert "--num_processes 4" in result.stdout and "launch.machine_rank=0" in result.stdout


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, repo):
    """A saved model both sides load: ZeRO-3 builds a model from a config inside deepspeed.zero.Init,
    whose random initialisation differs from a plain one, so the comparison starts from weights."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("base")
    exe = Path(sys.executable).with_name("seqtune")
    subprocess.run([str(exe), "train", "recipes/quickstart.yaml", f"output_dir={out}", *COMMON, "train.max_steps=1"],
                   cwd=repo, check=True, capture_output=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_on_two_cpu_processes_trains_like_ddp_and_saves_a_loadable_model(seqtune, tmp_path, stage,
                                                                                      base_model):
    """ZeRO-2 and ZeRO-3 over gloo with torch's SGD (no DeepSpeed optimizer op is built): the
    consolidated model loads, and its weights equal one process accumulating as many rows. The
    DeepSpeed run uses the default chunked loss (through ZeRO-3's partitioned output layer), the one
    process the unchunked one."""
    start_from = [f"model.name_or_path={base_model}", "model.config=null"]
    ds = seqtune("train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'ds'}", *COMMON, *start_from,
                 "launch.num_processes=2", "train.gradient_accumulation_steps=2",
                 f"launch.deepspeed={{zero_stage: {stage}}}", "checkpoint.every=2", timeout=400)
    assert ds.returncode == 0, ds.stderr[-3000:]
    one = seqtune("train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'one'}", *COMMON, *start_from,
                  "train.gradient_accumulation_steps=4", "train.loss=cross_entropy")
    assert one.returncode == 0, one.stderr[-3000:]
    want, got = load_file(str(tmp_path / "one/model.safetensors")), load_file(str(tmp_path / "ds/model.safetensors"))
    assert set(want) <= set(got)  # ZeRO's gathered state may also spell out the tied lm_head
    assert max((want[k] - got[k]).abs().max().item() for k in want) < 1e-5

    from transformers import AutoModelForCausalLM

    for path in (tmp_path / "ds", tmp_path / "ds/checkpoints/step-00000002"):
        model = AutoModelForCausalLM.from_pretrained(path)
        assert sum(p.numel() for p in model.parameters()) == sum(v.numel() for v in want.values())


@pytest.mark.slow
def test_a_deepspeed_run_killed_after_a_checkpoint_resumes_to_identical_weights(seqtune, tmp_path, monkeypatch):
    (tmp_path / "kill_plugin.py").write_text(
        "import os, signal\nfrom framework import hookimpl\n\n@hookimpl\ndef seqtune_step_end(step):\n"
        "    if step == int(os.environ.get('KILL_AT', '0')):\n        os.kill(os.getpid(), signal.SIGKILL)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    args = [*COMMON, "train.max_steps=8", "optimizer={name: adamw, lr: 1e-3}", "launch.num_processes=2",
            "train.gradient_accumulation_steps=2", "launch.deepspeed={zero_stage: 2}", "checkpoint.every=3",
            "plugins=[kill_plugin]"]
    assert seqtune("train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'whole'}", *args,
                   timeout=400).returncode == 0
    monkeypatch.setenv("KILL_AT", "5")
    killed = seqtune("train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'resumed'}", *args, timeout=400)
    assert killed.returncode != 0 and (tmp_path / "resumed/checkpoints/step-00000003/deepspeed").is_dir()
    monkeypatch.delenv("KILL_AT")
    resumed = seqtune("train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'resumed'}", *args, timeout=400)
    assert resumed.returncode == 0 and "at step 3" in resumed.stderr, resumed.stderr[-3000:]
    want = load_file(str(tmp_path / "whole/model.safetensors"))
    got = load_file(str(tmp_path / "resumed/model.safetensors"))
    assert all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.slow
def test_zero3_with_uneven_chunks_and_an_empty_filler_does_not_hang(seqtune, tmp_path, base_model):
    """21 micro-batches over 2 ranks (the last rank's last one is an empty filler) and a chunk of a few
    tokens, so each rank's micro-batches need different numbers of chunks: DeepSpeed ZeRO-3 waits
    forever unless every rank calls the output layer as often (chunk_ranges). The result equals one
    process accumulating two micro-batches."""
    rows = "data.mixture=[{source: recipes/quickstart/data/train.jsonl, count: 84}]"
    common = [*COMMON, rows, "train.max_steps=null", "train.epochs=1", "optimizer={name: sgd, lr: 0.05}",
              f"model.name_or_path={base_model}", "model.config=null"]
    ds = seqtune("train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'ds'}", *common, "launch.num_processes=2",
                 "launch.deepspeed={zero_stage: 3}", "train.loss={name: chunked_cross_entropy, memory_mib: 0.05}",
                 timeout=400)
    assert ds.returncode == 0, ds.stderr[-3000:]
    one = seqtune("train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'one'}", *common,
                  "train.gradient_accumulation_steps=2", "train.loss=cross_entropy")
    assert one.returncode == 0, one.stderr[-3000:]
    want, got = load_file(str(tmp_path / "one/model.safetensors")), load_file(str(tmp_path / "ds/model.safetensors"))
    assert max((want[k] - got[k]).abs().max().item() for k in want) < 1e-5
