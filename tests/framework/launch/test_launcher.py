"""Every launch shape on the CPU (gloo) through the real CLI: one process with DeepSpeed, several processes
(DDP, ZeRO-2, ZeRO-3), two machines on this host (by hand and as SLURM starts them); and the launch commands."""
from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from framework.config import load_recipe
from framework.launch.launcher import print_commands
from seqtune_testing import REPO, SEQTUNE, free_port, max_difference, run_machines

ROWS = "data.mixture=[{source: recipes/quickstart/data/train.jsonl, count: 96}]"
COMMON = [ROWS, "train.max_steps=3", "train.per_device_batch_size=4", "train.loss_reduction=token_mean",
          "optimizer={name: sgd, lr: 0.5}", "scheduler=constant", "logging.loggers=[jsonl]", "launch.device=cpu"]


def train(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SEQTUNE), "train", "recipes/quickstart.yaml", f"output_dir={out}", *COMMON, *overrides],
                          cwd=REPO, capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A saved model every comparison starts from: ZeRO-3 builds a model from a config inside
    deepspeed.zero.Init, whose random initialisation differs from a plain one."""
    out = tmp_path_factory.mktemp("base")
    assert train(out, "train.max_steps=1").returncode == 0
    return out


@pytest.fixture(scope="module")
def start_from(base_model):
    return [f"model.name_or_path={base_model}", "model.config=null"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, start_from):
    """The reference: one process accumulating 4 micro-batches, with the unchunked loss."""
    out = tmp_path_factory.mktemp("one")
    result = train(out, *start_from, "train.gradient_accumulation_steps=4", "train.loss=cross_entropy")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, start_from):
    """Two DDP processes on one machine accumulating 2 micro-batches each (the run, and its output)."""
    out = tmp_path_factory.mktemp("two")
    return out, train(out, *start_from, "launch.num_processes=2", "train.gradient_accumulation_steps=2")


def test_one_machines_run_takes_a_free_port_unless_the_recipe_names_one(repo, monkeypatch):
    """Two runs on one machine (two jobs on a node, two tests at once) would meet on the default port and
    the second would fail (EADDRINUSE): the default becomes a free port; a named port, or several machines'
    agreed one, stays."""
    import socket

    from framework.launch.launcher import with_free_port

    monkeypatch.chdir(repo)
    default = load_recipe("recipes/quickstart.yaml", ["launch.num_processes=2"]).recipe
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", default.launch.main_process_port))  # another run holds the default
        port = with_free_port(default).launch.main_process_port
        assert port != default.launch.main_process_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))  # and it is free
    named = load_recipe("recipes/quickstart.yaml", ["launch.num_processes=2", "launch.main_process_port=29411"]).recipe
    assert with_free_port(named).launch.main_process_port == 29411
    machines = load_recipe("recipes/quickstart.yaml", ["launch.num_processes=2", "launch.num_machines=2"]).recipe
    assert with_free_port(machines).launch.main_process_port == machines.launch.main_process_port


@pytest.mark.slow
def test_two_processes_equal_one_process_with_doubled_accumulation(two_processes, one_process):
    """Rank r takes micro-batches r, r+2, ...: two ranks accumulating 2 see exactly the micro-batches
    one process accumulating 4 sees, and token_mean makes their gradients the same."""
    out, result = two_processes
    assert result.returncode == 0, result.stderr[-3000:]
    assert max_difference(one_process, out) < 1e-5
    assert result.stdout.count("done") == 1  # the launcher reports once, not every worker


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


def test_print_commands_gives_each_machine_its_command(tmp_path, repo):
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


@pytest.mark.parametrize("flag", ["--print-commands", "--print-launch"])  # the old name still works
def test_print_commands_through_the_cli_needs_no_gpu(seqtune, flag):
    result = seqtune("train", "recipes/tulu3/gemma2-2b-sft.yaml", flag)
    assert result.returncode == 0, result.stderr
    assert "--num_processes 4" in result.stdout and "launch.machine_rank=0" in result.stdout


def test_the_old_flag_name_is_hidden_from_help(seqtune):
    shown = seqtune("train", "--help")
    assert "--print-commands" in shown.stdout and "--print-launch" not in shown.stdout


def test_one_process_with_deepspeed_starts_through_torchrun(repo, monkeypatch):
    """accelerate refuses --multi_gpu for one process; torchrun sets what DeepSpeed needs."""
    monkeypatch.chdir(repo)
    overrides = ["launch.deepspeed={zero_stage: 3}", "launch.device=cpu"]
    lines = print_commands(load_recipe("recipes/quickstart.yaml", overrides).recipe, "recipes/quickstart.yaml",
                           overrides)
    assert lines[0] == "# machine 0 of 1 (main machine; 1 process)"
    launcher = shlex.split(lines[3])
    assert launcher[:4] == ["SEQTUNE_WORKER=1", "DS_ACCELERATOR=cpu", "torchrun", "--standalone"]
    assert launcher[launcher.index("--nproc_per_node") + 1] == "1" and "--multi_gpu" not in launcher


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_on_two_cpu_processes_trains_like_ddp_and_saves_a_loadable_model(seqtune, tmp_path, stage,
                                                                                      start_from, one_process):
    """ZeRO-2 and ZeRO-3 over gloo with torch's SGD (no DeepSpeed optimizer op is built): the
    consolidated model loads, and its weights equal one process accumulating as many rows. The
    DeepSpeed run uses the default chunked loss (through ZeRO-3's partitioned output layer), the one
    process the unchunked one."""
    ds = seqtune("train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'ds'}", *COMMON, *start_from,
                 "launch.num_processes=2", "train.gradient_accumulation_steps=2",
                 f"launch.deepspeed={{zero_stage: {stage}}}", "checkpoint.every=2", timeout=400)
    assert ds.returncode == 0, ds.stderr[-3000:]
    assert max_difference(one_process, tmp_path / "ds") < 1e-5

    from transformers import AutoModelForCausalLM

    want = load_file(str(one_process / "model.safetensors"))
    for path in (tmp_path / "ds", tmp_path / "ds/checkpoints/step-00000002"):
        model = AutoModelForCausalLM.from_pretrained(path)
        assert sum(p.numel() for p in model.parameters()) == sum(v.numel() for v in want.values())


EXIT_PLUGIN = '''import atexit, json, os
import torch.distributed as dist
from framework import hookimpl


def _record():  # among the last things a worker does: is a process group left for the exit to tear down?
    with open(os.environ["EXIT_RECORD"] + "." + os.environ["RANK"], "w") as f:
        json.dump({"group_left": dist.is_initialized()}, f)


class _Finalized:  # deleted by the interpreter's teardown, which a finished worker leaves out
    def __init__(self, path, write=open):
        self.path, self.write = path, write

    def __del__(self):
        self.write(self.path, "w").close()


if "RANK" in os.environ:  # a worker, not the launcher (which loads the recipe's plugins too)
    atexit.register(_record)
    _kept = _Finalized(os.environ["EXIT_RECORD"] + ".finalized." + os.environ["RANK"])


@hookimpl
def seqtune_train_start(run):
    assert dist.is_initialized()  # DeepSpeed made one, so the record can tell
'''


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_in_one_process_trains_like_a_plain_run(seqtune, tmp_path, stage, start_from, one_process,
                                                              monkeypatch):
    """One process with DeepSpeed, as on one GPU (accelerate refuses --multi_gpu for one process, and
    DeepSpeed needs a launcher's RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): its weights equal the
    plain run's, and the worker has torn its process group down before it exits. Its exit handlers
    run, the interpreter's teardown does not (there, gloo threads the process groups keep can abort a
    finished run)."""
    (tmp_path / "exit_plugin.py").write_text(EXIT_PLUGIN)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("EXIT_RECORD", str(tmp_path / "exit.json"))
    ds = seqtune("train", "recipes/quickstart.yaml", f"output_dir={tmp_path / 'ds'}", *COMMON, *start_from,
                 "train.gradient_accumulation_steps=4", f"launch.deepspeed={{zero_stage: {stage}}}",
                 "plugins=[exit_plugin]", timeout=300)
    assert ds.returncode == 0, ds.stderr[-3000:]
    assert max_difference(one_process, tmp_path / "ds") < 1e-5
    assert json.loads((tmp_path / "exit.json.0").read_text()) == {"group_left": False}
    assert not (tmp_path / "exit.json.finalized.0").exists()


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


def assert_machine_0_is_main(machines: list[subprocess.CompletedProcess]) -> None:
    for machine in machines:
        assert machine.returncode == 0, machine.stderr[-3000:]
    main, *others = machines
    assert "optimizer steps" in main.stderr  # only the run's rank 0 reports the plan
    assert not any("optimizer steps" in other.stderr for other in others)


@pytest.mark.slow
def test_two_machines_on_one_host_train_like_one_machine(tmp_path, start_from, two_processes, one_process):
    """Two `seqtune train` commands, machine ranks 0 and 1 with one process each, meet at the main
    machine and train as two processes on one machine do (so as one process accumulating twice as
    much). Each machine preprocesses into its own cache; only the run's main process writes output_dir."""
    caches = [tmp_path / "cache0", tmp_path / "cache1"]
    machines = run_machines(["recipes/quickstart.yaml", f"output_dir={tmp_path / 'out'}", *COMMON, *start_from,
                             "launch.num_machines=2", "launch.num_processes=2", "launch.main_process_ip=127.0.0.1",
                             f"launch.main_process_port={free_port()}", "train.gradient_accumulation_steps=2"], caches)
    assert_machine_0_is_main(machines)
    assert all(any(cache.iterdir()) for cache in caches)  # each machine's own main process filled its cache
    assert max_difference(two_processes[0], tmp_path / "out") < 1e-5
    assert max_difference(one_process, tmp_path / "out") < 1e-5


def srun_env(node: int, nodes: int = 2, nodelist: str = "127.0.0.[1-2]", **more: str) -> dict[str, str]:
    """The variables srun gives the task it starts on `node` (one task per node)."""
    return {"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_NODES": str(nodes),
            "SLURM_STEP_NUM_TASKS": str(nodes), "SLURM_STEP_NODELIST": nodelist, "SLURM_NODEID": str(node),
            "SLURM_PROCID": str(node), "SLURM_LAUNCH_NODE_IPADDR": "10.9.9.9", **more}  # where srun ran: no node


@pytest.mark.slow
def test_srun_on_two_nodes_takes_the_launch_from_slurm(tmp_path, start_from, two_processes):
    """`srun --nodes 2 --ntasks-per-node 1 seqtune train ...` simulated on this host: the recipe names no
    machine count, rank, address or process count; each task takes them from SLURM's variables (the
    main machine is the first host of the compact node list) and says so in one line."""
    caches = [tmp_path / "cache0", tmp_path / "cache1"]
    machines = run_machines(["recipes/quickstart.yaml", f"output_dir={tmp_path / 'out'}", *COMMON, *start_from,
                             f"launch.main_process_port={free_port()}", "train.gradient_accumulation_steps=2"],
                            caches, envs=[srun_env(0, SLURM_GPUS_ON_NODE="1"), srun_env(1, SLURM_GPUS_ON_NODE="1")],
                            machine_rank=False)
    assert_machine_0_is_main(machines)
    for node, machine in enumerate(machines):
        assert f"launch: from SLURM: machine {node} of 2, main machine 127.0.0.1, 2 processes" in machine.stderr
    assert max_difference(two_processes[0], tmp_path / "out") < 1e-5
