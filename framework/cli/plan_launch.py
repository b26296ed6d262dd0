"""The launch shapes `seqtune plan` weighs: the longest max_seq_length with each
launch.sequence_parallel, and the fewest GPUs of each known size that fit the recipe."""
from __future__ import annotations

from typing import Any

from rich.table import Table

from framework.cli.common import console, print_line
from framework.estimation.hardware import ANY_GPU, gpu_sizes
from framework.estimation.memory import fewest_fitting, longest_fitting
from framework.estimation.sequence_parallel import group_sizes, shape_problem


def sequence_parallel_table(sweep: Any, label: str, gib: float) -> None:
    """The longest max_seq_length that fits with each launch.sequence_parallel the processes allow: N
    processes share each row, so per-token memory divides by N while model states stay as they are."""
    launch, attention = sweep.loaded.recipe.launch, sweep.loaded.recipe.model.attn_implementation
    sizes = group_sizes(launch.num_processes)
    if len(sizes) == 1:
        return  # one process: nothing to share a row with
    table = Table(title=f"sequence parallelism: the longest max_seq_length that fits {launch.num_processes} x "
                        f"{label}, to a multiple of 64", caption="* the recipe's launch.sequence_parallel")
    for column in ("sequence_parallel", "data-parallel groups", "longest max_seq_length", "tokens per GPU"):
        table.add_column(column, justify="right")
    refused = []
    for n in sizes:
        problem = shape_problem(sweep.shape, attention, n)
        longest = 0 if problem else longest_fitting(
            lambda length: sweep.estimate(max_seq_length=length, sequence_parallel=n), gib)
        refused += [f"  sequence_parallel {n}: {problem}"] if problem else []
        cells = [f"{longest:,}", f"{-(-longest // n):,}"] if longest else ["-" if problem else "none", "-"]
        table.add_row(f"{n}" + (" *" if n == launch.sequence_parallel else ""), f"{launch.num_processes // n}",
                      *cells, style="bold" if n == launch.sequence_parallel else None)
    console.print(table)
    for line in refused:
        print_line(line)


def gpus_table(sweep: Any, name: str, gib: float, most: int = 64) -> None:
    """For each known GPU size (and --gpu's), the fewest processes (up to `most`) that fit the recipe's
    max_seq_length as it is and, when it does not partition everything yet, with ZeRO-3: how many GPUs
    of which size it needs."""
    recipe = sweep.loaded.recipe
    stage = recipe.launch.deepspeed.zero_stage if recipe.launch.deepspeed is not None else None
    ways = [("as the recipe is", {})] + ([] if stage == 3 else [("with ZeRO-3", {"zero_stage": 3})])
    table = Table(title=f"GPUs: the fewest of each size that fit max_seq_length {recipe.data.max_seq_length:,} "
                        f"(the recipe has {recipe.launch.num_processes}; counted up to {most})",
                  caption="GiB per GPU in brackets; ZeRO-3: launch.deepspeed={zero_stage: 3}; * --gpu's size")
    table.add_column("GPU")
    table.add_column("memory", justify="right")
    for way, _ in ways:
        table.add_column(way, justify="right")
    for size, keys in gpu_sizes(gib if name == ANY_GPU else None).items():
        cells = [_fewest(sweep, size, changes, recipe.launch.sequence_parallel, most) for _, changes in ways]
        table.add_row(", ".join(keys) or "--gpu", f"{size:g} GiB" + (" *" if size == gib else ""), *cells,
                      style="bold" if size == gib else None)
    console.print(table)


def _fewest(sweep: Any, gib: float, changes: dict, multiple_of: int, most: int) -> str:
    found = fewest_fitting(lambda n: sweep.estimate(num_gpus=n, **changes), gib, multiple_of=multiple_of, limit=most)
    if found is None:
        most -= most % multiple_of
        return f"none ({sweep.estimate(num_gpus=most, **changes).total_gib:.1f} with {most})"
    count, estimate = found
    return f"{count} ({estimate.total_gib:.1f})"
