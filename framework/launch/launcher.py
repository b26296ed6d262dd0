"""Multi-process and multi-machine runs: `seqtune train` starts its workers through accelerate's
launcher, and each worker runs the same engine.

A run with launch.num_processes > 1 (or several machines) re-runs `seqtune train` with the same
recipe and overrides inside `accelerate launch`, marked by SEQTUNE_WORKER=1 so the workers train
instead of launching again. accelerate's launcher (torchrun underneath) stops every worker when one
fails, so a crashed rank ends the run with its error instead of leaving the others waiting.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

from framework.config.schema import Recipe

WORKER_ENV = "SEQTUNE_WORKER"


def is_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def needs_launch(recipe: Recipe) -> bool:
    """Several processes, several machines, or DeepSpeed (which wants a launcher's environment)."""
    launch = recipe.launch
    return not is_worker() and (launch.num_processes > 1 or launch.num_machines > 1 or launch.deepspeed is not None)


def launcher_args(recipe: Recipe, machine_rank: int | None = None) -> list[str]:
    """`accelerate launch` options for this recipe (num_processes counts every machine's)."""
    launch = recipe.launch
    rank = launch.machine_rank if machine_rank is None else machine_rank
    args = ["--num_processes", str(launch.num_processes), "--num_machines", str(launch.num_machines),
            "--machine_rank", str(rank), "--main_process_ip", launch.main_process_ip,
            "--main_process_port", str(launch.main_process_port),
            "--mixed_precision", launch.mixed_precision, "--dynamo_backend", "no"]
    # --multi_gpu is accelerate's name for "one process per device"; with launch.device=cpu the
    # workers' Accelerator(cpu=True) makes them gloo processes (accelerate's --cpu would start one).
    return [*args, "--multi_gpu"]


def worker_argv(recipe_path: str, overrides: list[str], machine_rank: int | None = None) -> list[str]:
    rank = [] if machine_rank is None else [f"launch.machine_rank={machine_rank}"]
    return ["-m", "framework.cli", "train", recipe_path, *overrides, *rank]


def launch(recipe: Recipe, recipe_path: str, overrides: list[str]) -> int:
    """Start this machine's workers and wait for them; returns the launcher's exit code."""
    argv = [sys.executable, "-m", "accelerate.commands.launch", *launcher_args(recipe),
            *worker_argv(recipe_path, overrides)]
    env = {**os.environ, WORKER_ENV: "1"}
    if recipe.launch.deepspeed is not None and recipe.launch.device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"  # before DeepSpeed is imported, or it looks for CUDA
    return subprocess.run(argv, env=env).returncode


def print_commands(recipe: Recipe, recipe_path: str, overrides: list[str]) -> list[str]:
    """What each machine runs: its seqtune command, and the exact launcher command that starts."""
    lines = []
    for rank in range(recipe.launch.num_machines):
        mine = [o for o in overrides if not o.startswith("launch.machine_rank=")]
        seqtune = ["seqtune", "train", recipe_path, *mine, f"launch.machine_rank={rank}"]
        accelerate = [f"{WORKER_ENV}=1", "accelerate", "launch", *launcher_args(recipe, rank),
                      *worker_argv(recipe_path, mine, rank)]
        role = "main machine" if rank == 0 else "worker machine"
        lines += [f"# machine {rank} of {recipe.launch.num_machines} ({role}; "
                  f"{recipe.launch.num_processes // recipe.launch.num_machines} processes)",
                  shlex.join(seqtune), "#   which starts:", shlex.join(accelerate), ""]
    return lines
