"""`seqtune train`: run a recipe to a Hugging Face checkpoint."""
from __future__ import annotations

import os
from typing import Optional

import typer

from framework.cli.common import OVERRIDES_HELP, RECIPE_HELP, console, err_console, show_warnings, user_errors


@user_errors
def train(recipe: str = typer.Argument(..., help=RECIPE_HELP),
          overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
          overwrite: bool = typer.Option(False, "--overwrite",
                                         help="Replace what output_dir holds (another run, other files) "
                                              "instead of refusing; the same as overwrite_output_dir=true."),
          print_commands: bool = typer.Option(False, "--print-commands",
                                              help="Print the command each machine runs (and the launcher "
                                                   "command that starts), and exit."),
          print_launch: bool = typer.Option(False, "--print-launch", hidden=True,
                                            help="The old name of --print-commands.")) -> None:
    """Train a model from a recipe and save it to the recipe's output_dir."""
    from framework.launch.launcher import is_worker
    from framework.launch.reports import to_launcher

    with to_launcher():  # a launched worker's error or stop goes to its launcher, which shows it once
        _train(recipe, overrides or [], overwrite, print_commands or print_launch)
    if is_worker():
        _exit_finished_worker()


def _train(recipe: str, overrides: list[str], overwrite: bool, print_commands: bool) -> None:
    from framework.launch import launcher
    from framework.registry import load_and_bind

    # An override, not a flag passed on: launched workers re-run this command line with the overrides.
    overrides = [*overrides, *(["overwrite_output_dir=true"] if overwrite else [])]
    if not launcher.is_worker():  # workers get what SLURM gave as overrides, from their launcher
        taken, line = launcher.from_slurm(recipe, overrides, os.environ)
        overrides += taken
        if line:
            err_console.print(line, markup=False)
    loaded, parts = load_and_bind(recipe, overrides)  # every recipe problem, in one pass
    if print_commands:
        for line in launcher.print_commands(loaded.recipe, recipe, overrides):
            console.print(line, highlight=False, soft_wrap=True, markup=False)
        return
    if launcher.needs_launch(loaded.recipe):
        _check_before_launch(loaded, parts)
        code = launcher.launch(loaded.recipe, recipe, overrides)
        if code:
            raise typer.Exit(code)
        launch = loaded.recipe.launch  # only the run's main process, on machine 0, writes output_dir
        by = f" by machine 0 ({launch.main_process_ip})" if launch.machine_rank else ""
        console.print(f"[green]done[/]: model saved to {loaded.recipe.output_dir}{by}")
        return
    from framework.training.loop import train as run  # torch and transformers load only now

    output_dir = run(loaded)
    _leave_process_group()
    if not launcher.is_worker():  # a launched run says it once, from the launcher
        console.print(f"[green]done[/]: model saved to {output_dir}")


def _check_before_launch(loaded, parts) -> None:
    """Plugin warnings and machine errors show once, here, not once per worker."""
    from framework.launch.preflight import preflight

    show_warnings(parts.registry.warnings)
    preflight(loaded.recipe)


def _leave_process_group() -> None:
    """A process group left to the interpreter's exit makes NCCL warn, and can hang there; every rank
    has finished with it once training returns (the loop's last barrier)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _exit_finished_worker() -> None:
    """Leave without the interpreter's teardown once the run is saved and every rank is done. Process
    groups that DeepSpeed, accelerate and DDP still reference keep their gloo threads after
    destroy_process_group; one that wants the GIL while the interpreter finalizes is stopped with
    pthread_exit, which aborts the process ("terminate called without an active exception": seen once
    in a ZeRO-3 LoRA run on a busy 2-core CI machine) and fails a run that had finished. The exit handlers
    (scratch folders, loggers) still run."""
    import atexit
    import sys

    atexit._run_exitfuncs()  # noqa: SLF001 (CPython's own; what a normal exit runs before finalizing)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
