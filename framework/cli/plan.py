"""`seqtune plan`: what each max_seq_length costs in memory and in data, and what to choose."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from framework.cli.common import GPU_HELP, OVERRIDES_HELP, RECIPE_HELP, console, print_line, show_warnings, user_errors


@user_errors
def plan(recipe: str = typer.Argument(..., help=RECIPE_HELP),
         overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
         gpu: str = typer.Option(..., "--gpu", metavar="GPU", help=GPU_HELP),
         samples: int = typer.Option(2000, "--samples", metavar="N", help="Measure N rows of the recipe's data."),
         plot: Optional[Path] = typer.Option(
             None, "--plot", metavar="PATH",
             help="Write PNG charts: memory per GPU against max_seq_length (with and without each memory saver) "
                  "to PATH, and the data's token-length histogram to PATH-lengths.png. Needs matplotlib.")) -> None:
    """A table over candidate max_seq_length values and the recipe's own (memory per GPU, fit, rows cut,
    trainable tokens lost, packing efficiency) and a recommendation; with several processes, the longest
    length that fits with each launch.sequence_parallel. Exit 1 when the recipe's own length does not fit."""
    from framework.cli.plan_launch import gpus_table, sequence_parallel_table
    from framework.estimation.hardware import gpu_label, resolve_gpu
    from framework.model.loading import recipe_shape
    from framework.registry import load_and_bind
    from framework.registry.factories import optimizer_state_tensors

    name, gib = resolve_gpu(gpu)
    if plot:
        from framework.report.plots import check_png

        check_png(plot)  # before minutes of measuring, not after
    loaded, parts = load_and_bind(recipe, overrides or [], absent_ok=True)
    for line in parts.absent.values():  # the plan is for the machine that has them
        print_line(f"[yellow]not on this machine[/]: {escape(line)}")
    show_warnings(parts.registry.warnings)
    states, note = optimizer_state_tensors(parts.optimizer, loaded.recipe.optimizer.name)
    show_warnings([note] if note else [])
    sweep = _Sweep(loaded, parts, recipe_shape(loaded.recipe, parts.registry), states)
    measured = _samples(loaded, parts, samples) if not _data_absent(parts.absent) and _offline(loaded, parts) else None
    rows = sweep.rows(gib, measured)
    label = gpu_label(name, gib)
    _print(loaded, rows, label, measured)
    keeping = _recommend(rows, sweep, gib, measured)
    _warn_cut(rows, keeping, len(measured or []))
    _savers(sweep, label, gib)
    sequence_parallel_table(sweep, label, gib)
    gpus_table(sweep, name, gib)
    if plot:
        _plot(plot, sweep, name, label, gib, measured)
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

    def quantize(self) -> list[tuple[str, Any, dict]]:
        """(override, None, settings changes) of a 4-bit base (QLoRA) for a LoRA recipe whose base is not
        quantized yet: a remedy, not a saver, since rounding the base's weights changes the results."""
        from framework.estimation.quantization import QuantSpec

        recipe = self.loaded.recipe
        if recipe.lora is None or recipe.model.quantization is not None:
            return []
        return [("model.quantization={method: nf4}", None, {"quantization": QuantSpec()})]

    def splits(self) -> list[tuple[str, Any, dict]]:
        """(override, None, settings changes) of each launch.sequence_parallel above the recipe's that its
        processes and its model allow."""
        from framework.estimation.sequence_parallel import group_sizes, shape_problem

        recipe = self.loaded.recipe
        return [(f"launch.sequence_parallel={n}", None, {"sequence_parallel": n})
                for n in group_sizes(recipe.launch.num_processes) if n > recipe.launch.sequence_parallel
                and not shape_problem(self.shape, recipe.model.attn_implementation, n)]

    def rows(self, gib: float, samples: Any) -> list:
        """A row per candidate length and one for the recipe's own."""
        from framework.estimation.sweep import LengthRow, data_at, lengths_for

        recipe, rows = self.loaded.recipe, []
        for max_seq_length in lengths_for(recipe.data.max_seq_length):
            estimate = self.estimate(max_seq_length=max_seq_length)
            row = LengthRow(max_seq_length, estimate.total_gib, estimate.fits(gib),
                            own=max_seq_length == recipe.data.max_seq_length)
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
        return untruncated_sample(loaded.recipe, parts.loaders, parts.formats, tokenizer, count, parts.objective())
    except UserError as exc:
        print_line(f"[yellow]data columns skipped[/]: {escape(exc.problems[0])}")
        return None


def _offline(loaded: Any, parts: Any) -> bool:
    """Whether the rows' tokens are what trains (not so for an online objective: GRPO's completions)."""
    from framework.training.rollout import is_online

    if not is_online(parts.objective()):
        return True
    print_line(f"[yellow]data columns skipped[/]: objective {loaded.recipe.objective.name} trains the completions "
               "it generates, not its rows' tokens (its rows are prompts: one longer than max_seq_length - "
               "max_new_tokens is dropped, counted in `seqtune check --samples`)")
    return False


def _data_absent(absent: dict[str, str]) -> bool:
    if any(key.startswith(("data.", "tokenizer.")) for key in absent):
        print_line("[yellow]data columns skipped[/]: the data or the tokenizer is not on this machine")
        return True
    return False


def _print(loaded: Any, rows: list, label: str, samples: Any) -> None:
    from rich.table import Table

    from framework.cli.histogram import terminal

    recipe = loaded.recipe
    split = recipe.launch.sequence_parallel
    table = Table(title=f"{loaded.path} on {recipe.launch.num_processes} x {label}, "
                        f"truncation {recipe.data.truncation.name}, packing {recipe.data.packing.name}"
                        + (f", sequence_parallel {split}" if split > 1 else ""),
                  caption="* the recipe's max_seq_length")
    for column in ("length", "GiB per GPU", "fits", "rows cut", "rows dropped",
                   "trainable lost", "packing eff."):
        table.add_column(column, justify="right")
    for r in rows:
        data = ([f"{r.rows_truncated:,}", f"{r.rows_dropped:,}", f"{r.trainable_lost:.2%}", f"{r.efficiency:.1%}"]
                if r.trainable_lost is not None else ["-"] * 4)
        length = f"{r.max_seq_length:,}" + (" *" if r.own else "")
        table.add_row(length, f"{r.memory_gib:.1f}", "yes" if r.fits else "[red]no[/]", *data,
                      style="bold" if r.own else None)
    console.print(table)
    if samples:
        lengths = [len(s.input_ids) for s in samples]
        console.print(f"token lengths of {len(samples):,} rows:")
        for line in terminal(lengths, [r.max_seq_length for r in rows]):
            console.print(line, highlight=False)


def _plot(plot: Path, sweep: _Sweep, name: str, label: str, gib: float, samples: Any) -> None:
    """The memory chart at PATH and, when the data could be read, the length histogram beside it."""
    from framework.estimation.sweep import CANDIDATES
    from framework.report.plots import length_histogram, memory_chart

    recipe = sweep.loaded.recipe
    curves = {override: [(n, sweep.estimate(loss, max_seq_length=n, **changes).total_gib) for n in CANDIDATES]
              for override, loss, changes in [("as the recipe is", None, {}), *sweep.savers]}
    processes = recipe.launch.num_processes
    on = f"each of {processes} x {label}" if processes > 1 else f"one {label}"
    memory_chart(curves, name, gib, plot, f"{sweep.loaded.path}: memory on {on}")
    print_line(f"memory chart written to {plot}")
    if not samples:
        print_line("length histogram skipped: the data could not be read here")
        return
    lengths = plot.with_name(f"{plot.stem}-lengths{plot.suffix}")
    length_histogram([len(s.input_ids) for s in samples], list(CANDIDATES), lengths,
                     f"{sweep.loaded.path}: token lengths of {len(samples):,} rows")
    print_line(f"length histogram written to {lengths}")


def _recommend(rows: list, sweep: _Sweep, gib: float, samples: Any) -> Optional[int]:
    """The largest listed length that fits (and, between the candidates, to a multiple of 64), and the
    smallest that keeps 99% of the trainable tokens (returned): the smallest listed one, or the
    length up to which whole rows hold 99% of them when that is shorter."""
    from framework.data.tokenize import shortest_keeping
    from framework.estimation.memory import longest_fitting
    from framework.estimation.sweep import recommend

    largest, keeping = recommend(rows)
    if samples:
        whole = shortest_keeping([len(s.input_ids) for s in samples], [s.num_trainable for s in samples])
        keeping = min(n for n in (keeping, whole) if n is not None) if (keeping or whole) else None
    longest = longest_fitting(lambda n: sweep.estimate(max_seq_length=n), gib)
    exact = f" (to a multiple of 64: {longest:,})" if longest > (largest or 0) else ""
    print_line(f"largest max_seq_length that fits: {f'{largest:,}' if largest else 'none'}{exact}"
               + (f"; smallest keeping 99% of trainable tokens: {keeping:,}" if keeping else ""))
    return keeping


def _warn_cut(rows: list, keeping: Optional[int], measured: int) -> None:
    """The line `check --samples` and `train` show when the recipe's length cuts too much, on the sample."""
    from framework.data.tokenize import cut_warning

    own = next(r for r in rows if r.own)
    if own.trainable_lost is not None:
        line = cut_warning(own.max_seq_length, own.trainable_lost, own.rows_truncated, own.rows_dropped, measured,
                           keeping)
        show_warnings([line] if line else [])


def _savers(sweep: _Sweep, label: str, gib: float) -> None:
    """The longest max_seq_length that fits with each memory saver the recipe does not use, and all."""
    from framework.estimation.memory import longest_fitting

    savers = sweep.savers
    if not savers:
        return
    recipe = sweep.loaded.recipe
    print_line(f"memory savers (the same results) and the longest max_seq_length that fits "
               f"{recipe.launch.num_processes} x {label} with each, to a multiple of 64:")
    for override, loss, changes in [("as the recipe is", None, {}), *savers]:
        longest = longest_fitting(lambda n: sweep.estimate(loss, max_seq_length=n, **changes), gib)
        print_line(f"  {override}: {f'{longest:,}' if longest else 'none'}")


def _remedies(max_seq_length: int, sweep: _Sweep, gib: float) -> None:
    from framework.estimation.sweep import REMEDIES

    print_line(f"at max_seq_length {max_seq_length:,} it does not fit; each change alone gives:")
    for override, loss, changes in [*sweep.savers, *((o, None, c) for o, c in REMEDIES), *sweep.quantize(),
                                    *sweep.splits()]:
        estimate = sweep.estimate(loss, **changes)
        print_line(f"  {override}: {estimate.total_gib:.1f} GiB ({'fits' if estimate.fits(gib) else 'does not fit'})")


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
