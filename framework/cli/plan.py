"""`seqtune plan`: what each max_seq_length costs in memory and in data, and what to choose."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Optional

import typer

from framework.cli.common import GPU_HELP, OVERRIDES_HELP, RECIPE_HELP, console, show_warnings, user_errors


@user_errors
def plan(recipe: str = typer.Argument(..., help=RECIPE_HELP),
         overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
         gpu: str = typer.Option(..., "--gpu", help=GPU_HELP),
         samples: int = typer.Option(2000, "--samples", help="Rows of the recipe's data to measure."),
         plot: Optional[Path] = typer.Option(
             None, "--plot", help="Write PNG charts: memory per GPU against max_seq_length (with and without "
                                  "each memory saver) to PATH, and the data's token-length histogram to "
                                  "PATH-lengths.png. Needs matplotlib.")) -> None:
    """A table over candidate max_seq_length values (memory per GPU, fit, rows cut, trainable tokens
    lost, packing efficiency) and a recommendation. Exit 1 when the recipe's own length does not fit."""
    from framework.estimation.hardware import resolve_gpu
    from framework.model.loading import recipe_shape
    from framework.registry import load_and_bind
    from framework.registry.factories import optimizer_state_tensors

    name, gib = resolve_gpu(gpu)
    if plot:
        from framework.report.plots import check_png

        check_png(plot)  # before minutes of measuring, not after
    loaded, parts = load_and_bind(recipe, overrides or [])
    show_warnings(parts.registry.warnings)
    states, note = optimizer_state_tensors(parts.optimizer, loaded.recipe.optimizer.name)
    show_warnings([note] if note else [])
    sweep = _Sweep(loaded, parts, recipe_shape(loaded.recipe, parts.registry), states)
    measured = _samples(loaded, parts, samples)
    rows = sweep.rows(gib, measured)
    _print(loaded, rows, name, gib, measured)
    _recommend(rows, sweep, gib)
    _savers(sweep, name, gib)
    if plot:
        _plot(plot, sweep, name, gib, measured)
    own = sweep.estimate()
    if not own.fits(gib):
        _remedies(own.settings["max_seq_length"], sweep, gib)
        raise typer.Exit(1)


class _Sweep:
    """The recipe's memory estimate at other settings, and its data at other lengths."""

    def __init__(self, loaded: Any, parts: Any, shape: Any, optimizer_states: int):
        self.loaded, self.parts, self.shape, self.states = loaded, parts, shape, optimizer_states

    def estimate(self, loss: Any = None, **changes: Any) -> Any:
        """The estimate with `changes` to the settings and, when given, another bound loss plugin."""
        from framework.estimation.for_recipe import estimate_for_recipe

        return estimate_for_recipe(self.loaded, self.shape, optimizer_states=self.states,
                                   loss=loss or self.parts.loss, documents_per_row=self.documents,
                                   objective=self.objective, **changes)

    @functools.cached_property
    def objective(self) -> Any:
        return self.parts.objective()

    @functools.cached_property
    def documents(self) -> bool:
        from framework.model.attention import separates_documents

        return separates_documents(self.parts.packing())

    @functools.cached_property
    def savers(self) -> list[tuple[str, Any, dict]]:
        """(override, bound loss or None, settings changes) of each memory saver the recipe does not
        use yet (they leave every number of the result as it is), then of all of them together."""
        from framework.config.schema import TrainConfig
        from framework.config.validate import Problems
        from framework.estimation.sweep import SAVERS

        default_loss, own = TrainConfig().loss, self.estimate().total
        found = []
        if self.loaded.recipe.train.loss.name != default_loss.name:
            loss = self.parts.registry.bind("losses", default_loss, Problems(lambda key: "schema"), "train.loss")
            found.append((f"train.loss={default_loss.name}", loss, {}))
        found += [(override, None, changes) for override, changes in SAVERS]
        found = [saver for saver in found if self.estimate(saver[1], **saver[2]).total < own]
        if len(found) > 1:
            loss = next((saver[1] for saver in found if saver[1] is not None), None)
            found.append(("all of them", loss, {k: v for saver in found for k, v in saver[2].items()}))
        return found

    def rows(self, gib: float, samples: Any) -> list:
        from framework.estimation.sweep import CANDIDATES, LengthRow, data_at

        recipe, rows = self.loaded.recipe, []
        for max_seq_length in CANDIDATES:
            estimate = self.estimate(max_seq_length=max_seq_length)
            row = LengthRow(max_seq_length, estimate.total_gib, estimate.fits(gib))
            if samples:
                row.rows_truncated, row.rows_dropped, row.trainable_lost, row.efficiency = data_at(
                    samples, self.parts.truncation, self.parts.packing(), recipe.train.per_device_batch_size,
                    max_seq_length, recipe.seed)
            rows.append(row)
        return rows


def _samples(loaded: Any, parts: Any, count: int):
    """The recipe's rows untruncated, or None with a note when its data cannot be read here."""
    from framework.data.pipeline import untruncated_sample
    from framework.errors import UserError
    from framework.model.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer(loaded.recipe, parts.registry.entries["chat_templates"])
        return untruncated_sample(loaded.recipe, parts.loaders, parts.formats, tokenizer, count)
    except UserError as exc:
        console.print(f"[yellow]data columns skipped[/]: {exc.problems[0]}", soft_wrap=True)
        return None


def _print(loaded: Any, rows: list, name: str, gib: float, samples: Any) -> None:
    from rich.table import Table

    from framework.cli.histogram import terminal
    from framework.estimation.sweep import CANDIDATES

    recipe = loaded.recipe
    table = Table(title=f"{loaded.path} on {recipe.launch.num_processes} x {name} ({gib:g} GiB), "
                        f"truncation {recipe.data.truncation.name}, packing {recipe.data.packing.name}")
    for column in ("length", "GiB per GPU", "fits", "rows cut", "rows dropped",
                   "trainable lost", "packing eff."):
        table.add_column(column, justify="right")
    for r in rows:
        data = ([f"{r.rows_truncated:,}", f"{r.rows_dropped:,}", f"{r.trainable_lost:.2%}", f"{r.efficiency:.1%}"]
                if r.trainable_lost is not None else ["-"] * 4)
        table.add_row(f"{r.max_seq_length:,}", f"{r.memory_gib:.1f}", "yes" if r.fits else "[red]no[/]", *data)
    console.print(table)
    if samples:
        lengths = [len(s.input_ids) for s in samples]
        console.print(f"token lengths of {len(samples):,} rows:")
        for line in terminal(lengths, list(CANDIDATES)):
            console.print(line, highlight=False)


def _plot(plot: Path, sweep: _Sweep, name: str, gib: float, samples: Any) -> None:
    """The memory chart at PATH and, when the data could be read, the length histogram beside it."""
    from framework.estimation.sweep import CANDIDATES
    from framework.report.plots import length_histogram, memory_chart

    recipe = sweep.loaded.recipe
    curves = {override: [(n, sweep.estimate(loss, max_seq_length=n, **changes).total_gib) for n in CANDIDATES]
              for override, loss, changes in [("as the recipe is", None, {}), *sweep.savers]}
    per_gpu = f"{recipe.launch.num_processes} x {name}" if recipe.launch.num_processes > 1 else name
    memory_chart(curves, name, gib, plot, f"{sweep.loaded.path}: memory per GPU on {per_gpu}")
    console.print(f"memory chart written to {plot}", highlight=False, soft_wrap=True)
    if not samples:
        console.print("length histogram skipped: the data could not be read here", soft_wrap=True)
        return
    lengths = plot.with_name(f"{plot.stem}-lengths{plot.suffix}")
    length_histogram([len(s.input_ids) for s in samples], list(CANDIDATES), lengths,
                     f"{sweep.loaded.path}: token lengths of {len(samples):,} rows")
    console.print(f"length histogram written to {lengths}", highlight=False, soft_wrap=True)


def _recommend(rows: list, sweep: _Sweep, gib: float) -> None:
    """The largest listed length that fits (and, between the candidates, to a multiple of 64), and the
    smallest that keeps 99% of the trainable tokens."""
    from framework.estimation.memory import longest_fitting
    from framework.estimation.sweep import recommend

    largest, keeping = recommend(rows)
    longest = longest_fitting(lambda n: sweep.estimate(max_seq_length=n), gib)
    exact = f" (to a multiple of 64: {longest:,})" if longest > (largest or 0) else ""
    console.print(f"largest max_seq_length that fits: {f'{largest:,}' if largest else 'none'}{exact}"
                  + (f"; smallest keeping 99% of trainable tokens: {keeping:,}" if keeping else ""), soft_wrap=True)


def _savers(sweep: _Sweep, name: str, gib: float) -> None:
    """The longest max_seq_length that fits with each memory saver the recipe does not use, and all."""
    from framework.estimation.memory import longest_fitting

    savers = sweep.savers
    if not savers:
        return
    recipe = sweep.loaded.recipe
    console.print(f"memory savers (the same results) and the longest max_seq_length that fits "
                  f"{recipe.launch.num_processes} x {name} with each, to a multiple of 64:", soft_wrap=True)
    for override, loss, changes in [("as the recipe is", None, {}), *savers]:
        longest = longest_fitting(lambda n: sweep.estimate(loss, max_seq_length=n, **changes), gib)
        console.print(f"  {override}: {f'{longest:,}' if longest else 'none'}", highlight=False, soft_wrap=True)


def _remedies(max_seq_length: int, sweep: _Sweep, gib: float) -> None:
    from framework.estimation.sweep import REMEDIES

    console.print(f"at max_seq_length {max_seq_length:,} it does not fit; "
                  "each change alone gives:", soft_wrap=True)
    for override, loss, changes in [*sweep.savers, *((o, None, c) for o, c in REMEDIES)]:
        estimate = sweep.estimate(loss, **changes)
        console.print(f"  {override}: {estimate.total_gib:.1f} GiB ({'fits' if estimate.fits(gib) else 'does not fit'})",
                      highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
