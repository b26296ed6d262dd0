"""Multi-process and multi-machine runs: `seqtune train` starts its workers through a launcher, and
each worker runs the same engine.

A run with launch.num_processes > 1 (or several machines, or DeepSpeed) re-runs `seqtune train` with
the same recipe and overrides inside a launcher, marked by SEQTUNE_WORKER=1 so the workers train
instead of launching again. Several processes start through `accelerate launch --multi_gpu`; one
process (DeepSpeed on one GPU) through torchrun, which accelerate uses underneath. Either stops every
worker when one fails, so a crashed rank ends the run with its error instead of leaving the others
waiting.

A UserError or a stop in the workers reaches the user once, from this process (reports.py).

Under SLURM's `srun` (one task per node), the machine's rank, the number of machines, the main
machine and the processes per machine come from SLURM's variables wherever the recipe leaves them
unset.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from framework.config.schema import Recipe
from framework.errors import UserError

WORKER_ENV = "SEQTUNE_WORKER"
SHOWN = {"accelerate.commands.launch": ["accelerate", "launch"], "torch.distributed.run": ["torchrun"]}


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


def launcher_module(recipe: Recipe, machine_rank: int | None = None) -> list[str]:
    """The launcher as `python -m` arguments: its module and its options."""
    if recipe.launch.num_processes == 1:  # one machine too: the recipe checks split processes evenly
        # accelerate refuses --multi_gpu for one process, and its plain launcher sets none of RANK,
        # WORLD_SIZE, MASTER_ADDR, MASTER_PORT, without which DeepSpeed looks for MPI. torchrun sets
        # them; --standalone takes a free port, so one-GPU runs side by side on a machine never collide.
        return ["torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "1"]
    return ["accelerate.commands.launch", *launcher_args(recipe, machine_rank)]


def worker_argv(recipe_path: str, overrides: list[str], machine_rank: int | None = None) -> list[str]:
    rank = [] if machine_rank is None else [f"launch.machine_rank={machine_rank}"]
    return ["-m", "framework.cli", "train", recipe_path, *overrides, *rank]


def worker_env(recipe: Recipe) -> dict[str, str]:
    """What the workers' environment adds to this process's (the same wherever the commands are printed)."""
    env = {WORKER_ENV: "1"}
    if recipe.launch.deepspeed is not None and recipe.launch.device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"  # before DeepSpeed is imported, or it uses a GPU it finds
    return env


def launch(recipe: Recipe, recipe_path: str, overrides: list[str]) -> int:
    """Start this machine's workers and wait for them; returns the launcher's exit code, or raises the
    UserError or stop the workers reported (see reports.py: the CLI then shows it once, as for one process)."""
    from framework.launch import reports

    recipe = with_free_port(recipe)
    argv = [sys.executable, "-m", reports.__name__, *launcher_module(recipe), *worker_argv(recipe_path, overrides)]
    return reports.run(argv, {**os.environ, **worker_env(recipe)})


def with_free_port(recipe: Recipe) -> Recipe:
    """One machine's run on a port no other process holds, unless the recipe names one: two runs on a
    machine (two jobs on one node, two tests at once) would otherwise meet on the default port and fail.
    Several machines keep the port they all agreed on."""
    import socket

    launch = recipe.launch
    default = next(f.default for f in dataclasses.fields(launch) if f.name == "main_process_port")
    if launch.num_machines > 1 or launch.main_process_port != default:
        return recipe
    with socket.socket() as probe:
        probe.bind((launch.main_process_ip, 0))
        port = probe.getsockname()[1]
    return dataclasses.replace(recipe, launch=dataclasses.replace(launch, main_process_port=port))


def print_commands(recipe: Recipe, recipe_path: str, overrides: list[str]) -> list[str]:
    """What each machine runs: its seqtune command, and the exact launcher command that starts."""
    lines = []
    env = [f"{name}={value}" for name, value in worker_env(recipe).items()]
    for rank in range(recipe.launch.num_machines):
        mine = [o for o in overrides if not o.startswith("launch.machine_rank=")]
        seqtune = ["seqtune", "train", recipe_path, *mine, f"launch.machine_rank={rank}"]
        module, *options = launcher_module(recipe, rank)
        launcher = [*env, *SHOWN[module], *options, *worker_argv(recipe_path, mine, rank)]
        role = "main machine" if rank == 0 else "worker machine"
        each = recipe.launch.num_processes // recipe.launch.num_machines
        lines += [f"# machine {rank} of {recipe.launch.num_machines} ({role}; {each} process{'es' * (each > 1)})",
                  shlex.join(seqtune), "#   which starts:", shlex.join(launcher), ""]
    return lines


# --- SLURM ---------------------------------------------------------------------------------------

FROM_SLURM = ("launch.num_machines", "launch.machine_rank", "launch.main_process_ip", "launch.num_processes")


@dataclass(frozen=True)
class SlurmStep:
    """Where `srun` started this task: its node among the step's nodes, and what SLURM gave them."""
    nodes: int
    node: int
    tasks: int
    main_host: str
    gpus_per_node: int | None


def _first(env: Mapping[str, str], *names: str) -> str | None:
    return next((env[name] for name in names if env.get(name)), None)


def srun_step(env: Mapping[str, str]) -> SlurmStep | None:
    """The srun step this process runs in, or None. A batch script's own shell is not a step: it runs
    on the first node only, so taking the job's node count there would wait forever for the others."""
    if not _first(env, "SLURM_STEP_NUM_NODES", "SLURM_STEP_NODELIST"):
        return None
    nodes = _first(env, "SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
    nodelist = _first(env, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
    node = _first(env, "SLURM_NODEID", "SLURM_PROCID")
    if nodes is None or nodelist is None or node is None:
        return None
    tasks = _first(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS") or nodes
    gpus = _first(env, "SLURM_GPUS_ON_NODE")
    try:
        # Not SLURM_LAUNCH_NODE_IPADDR: that is where srun was typed (a login node), not a node of the step.
        return SlurmStep(int(nodes), int(node), int(tasks), expand_nodelist(nodelist)[0],
                         int(gpus) if gpus and gpus.isdigit() else None)
    except (ValueError, IndexError):
        raise UserError(f"SLURM's variables cannot be read (nodes {nodes!r}, node {node!r}, tasks {tasks!r}, "
                        f"nodelist {nodelist!r}): set launch.num_machines, launch.machine_rank and "
                        "launch.main_process_ip in the recipe instead") from None


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compact host list in full: `gpu[01-03,07],login` -> gpu01, gpu02, gpu03, gpu07, login
    (zero padding kept; several bracket groups in one name multiply), without needing `scontrol`."""
    return [host for item in _split_outside_brackets(nodelist) for host in _expand_name(item)]


def _split_outside_brackets(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def _expand_name(name: str) -> list[str]:
    match = re.match(r"([^\[]*)\[([^\]]*)\](.*)", name)
    if match is None:
        return [name]
    prefix, ranges, rest = match.groups()
    numbers = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        width = len(low)
        numbers += [str(n).zfill(width) for n in range(int(low), int(high or low) + 1)]
    return [prefix + number + tail for number in numbers for tail in _expand_name(rest)]


def slurm_settings(step: SlurmStep, explicit: Mapping[str, Any]) -> tuple[list[str], str | None]:
    """Overrides for the launch keys the recipe leaves at their defaults (`explicit` maps the others
    to their values), and one line saying what came from SLURM (None when nothing did)."""
    if step.tasks != step.nodes:
        raise UserError(f"srun started {step.tasks} tasks on {step.nodes} node(s), and seqtune train starts each "
                        "machine's processes itself: run it as one task per node, `srun --ntasks-per-node=1 "
                        "seqtune train ...`")
    for key, ours in (("launch.num_machines", step.nodes), ("launch.machine_rank", step.node)):
        if key in explicit and explicit[key] != ours:
            raise UserError(f"{key}={explicit[key]} disagrees with srun, which started this on node {step.node} of "
                            f"{step.nodes} ({key}={ours} here): leave {key} at its default for SLURM to fill")
    values = {"launch.num_machines": step.nodes, "launch.machine_rank": step.node,
              "launch.main_process_ip": step.main_host}
    if step.gpus_per_node:
        values["launch.num_processes"] = step.gpus_per_node * step.nodes
    taken = {key: value for key, value in values.items() if key not in explicit}
    if not taken or (step.nodes == 1 and "launch.num_processes" not in taken):
        return [], None
    main = taken.get("launch.main_process_ip", explicit.get("launch.main_process_ip"))
    said = [f"machine {step.node} of {step.nodes}", f"main machine {main}"]
    if "launch.num_processes" in taken:
        said.append(f"{taken['launch.num_processes']} processes ({step.gpus_per_node} a node, SLURM_GPUS_ON_NODE)")
    shown = [f"{key}={value}" for key, value in taken.items()]
    return shown, f"launch: from SLURM: {', '.join(said)} ({' '.join(shown)})"


def from_slurm(recipe_path: str, overrides: list[str], env: Mapping[str, str]) -> tuple[list[str], str | None]:
    """Under srun, the launch overrides SLURM gives this machine and the line that says so.

    A key the recipe leaves at its default is SLURM's even where a file spells the default out (as the
    bundled tulu3 recipes and imported commands do): under srun every node runs the same command, so
    num_machines 1, machine_rank 0 or main_process_ip 127.0.0.1 on several nodes cannot be meant."""
    step = srun_step(env)
    if step is None:
        return [], None
    from framework.config.load import read_recipe
    from framework.config.schema import LaunchConfig

    launch, default = read_recipe(recipe_path, overrides)[0].recipe.launch, LaunchConfig()
    # The recipe's own problems are reported by the full load that follows.
    names = [key.split(".")[1] for key in FROM_SLURM]
    explicit = {f"launch.{name}": getattr(launch, name) for name in names
                if getattr(launch, name) != getattr(default, name)}
    return slurm_settings(step, explicit)
