"""`seqtune plan`: what each max_seq_length costs in memory and in data, and what to choose."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from framework.cli.common import OVERRIDES_HELP, RECIPE_HELP, console, user_errors


@user_errors
def plan(recipe: str = typer.Argument(..., help=RECIPE_HELP),
         overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
         gpu: str = typer.Option(..., "--gpu", help="3090, 4090, a100-40, a100-80, h100, h200, or GiB."),
         samples: int = typer.Option(2000, "--samples", help="Rows of the recipe's data to measure."),
         plot: Optional[Path] = typer.Option(None, "--plot", help="Write a length histogram PNG here.")) -> None:
    """A table over candidate max_seq_length values (memory per GPU, fit, rows cut, trainable tokens
    lost, packing efficiency) and a recommendation. Exit 1 when the recipe's own length does not fit."""
    from framework.cli.check import gpu_memory, shape_of
    from framework.components import bind_parts
    from framework.config import load_recipe
    from framework.memory import plan_from_recipe

    name, gib = gpu_memory(gpu)
    loaded = load_recipe(recipe, overrides or [])
    parts = bind_parts(loaded)
    shape = shape_of(loaded.recipe)
    samples_ = _samples(loaded, parts, samples)
    rows = _rows(loaded, parts, shape, gib, samples_)
    _print(loaded, rows, name, gib, samples_, plot)
    if not plan_from_recipe(loaded, shape=shape).fits(gib):
        _remedies(loaded, shape, gib)
        raise typer.Exit(1)


def _samples(loaded, parts, count: int):
    """The recipe's rows untruncated, or None with a note when its data cannot be read here."""
    from framework.errors import UserError
    from framework.modeling import load_tokenizer
    from framework.planner import untruncated_samples

    try:
        tokenizer = load_tokenizer(loaded.recipe, parts.registry.entries["chat_templates"])
        return untruncated_samples(loaded, parts, tokenizer, count)
    except UserError as exc:
        console.print(f"[yellow]data columns skipped[/]: {exc.problems[0]}", soft_wrap=True)
        return None


def _rows(loaded, parts, shape, gib: float, samples):
    from framework.memory import plan_from_recipe
    from framework.planner import CANDIDATES, LengthRow, data_at

    recipe, rows = loaded.recipe, []
    for seq_len in CANDIDATES:
        plan = plan_from_recipe(loaded, shape=shape, seq_len=seq_len)
        row = LengthRow(seq_len, plan.total_gib, plan.fits(gib))
        if samples:
            row.rows_truncated, row.rows_dropped, row.trainable_lost, row.efficiency = data_at(
                samples, parts.truncation, parts.packing(), recipe.train.per_device_batch_size, seq_len, recipe.seed)
        rows.append(row)
    return rows


def _print(loaded, rows, name: str, gib: float, samples, plot: Optional[Path]) -> None:
    from rich.table import Table

    from framework.histogram import terminal, write_png
    from framework.planner import CANDIDATES, recommend

    recipe = loaded.recipe
    table = Table(title=f"{loaded.path} on {recipe.launch.num_processes} x {name} ({gib:g} GiB), "
                        f"truncation {recipe.data.truncation.name}, packing {recipe.data.packing.name}")
    for column in ("length", "GiB per GPU", "fits", "rows cut", "rows dropped",
                   "trainable lost", "packing eff."):
        table.add_column(column, justify="right")
    for r in rows:
        data = ([f"{r.rows_truncated:,}", f"{r.rows_dropped:,}", f"{r.trainable_lost:.2%}", f"{r.efficiency:.1%}"]
                if r.trainable_lost is not None else ["-"] * 4)
        table.add_row(f"{r.seq_len:,}", f"{r.memory_gib:.1f}", "yes" if r.fits else "[red]no[/]", *data)
    console.print(table)
    if samples:
        lengths = [len(s.input_ids) for s in samples]
        console.print(f"token lengths of {len(samples):,} rows:")
        for line in terminal(lengths, list(CANDIDATES)):
            console.print(line, highlight=False)
        if plot:
            write_png(plot, lengths, list(CANDIDATES))
            console.print(f"histogram written to {plot}")
    largest, keeping = recommend(rows)
    console.print(f"largest max_seq_length that fits: {f'{largest:,}' if largest else 'none'}"
                  + (f"; smallest keeping 99% of trainable tokens: {keeping:,}" if keeping else ""), soft_wrap=True)


def _remedies(loaded, shape, gib: float) -> None:
    from framework.memory import plan_from_recipe
    from framework.planner import REMEDIES

    console.print(f"at max_seq_length {loaded.recipe.data.max_seq_length:,} it does not fit; "
                  "each change alone gives:", soft_wrap=True)
    for override, keywords in REMEDIES:
        plan = plan_from_recipe(loaded, shape=shape, **keywords)
        console.print(f"  {override}: {plan.total_gib:.1f} GiB ({'fits' if plan.fits(gib) else 'does not fit'})",
                      highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
