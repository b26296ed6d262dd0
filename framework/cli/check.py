"""`seqtune check`: validate a recipe without training and show it resolved."""
from __future__ import annotations

from typing import Any, Optional

import typer

from framework.cli.common import GPU_HELP, OVERRIDES_HELP, RECIPE_HELP, console, print_line, show_warnings, user_errors


@user_errors
def check(recipe: str = typer.Argument(..., help=RECIPE_HELP),
          overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
          gpu: Optional[str] = typer.Option(None, "--gpu", help=GPU_HELP),
          samples: int = typer.Option(0, "--samples", metavar="N", help="Preprocess the data (cached) and show N rows as "
                                      "the model sees them, the truncation report and the run's size.")) -> None:
    """Validate a recipe, its plugin options and the columns and first row of each local data
    source, and print it resolved; with --gpu, also the memory plan per GPU. Exit 0 when valid (and
    it fits), 1 when it does not fit, 2 when invalid."""
    from framework.cli.show import recipe_tree
    from framework.estimation.hardware import resolve_gpu
    from framework.registry import load_and_bind

    target = resolve_gpu(gpu) if gpu is not None else None  # a bad --gpu is an error before any output
    loaded, parts = load_and_bind(recipe, overrides or [])
    show_warnings(parts.registry.warnings)
    warning = _position_warning(loaded)
    console.print(recipe_tree(loaded, parts.registry))
    console.print(f"[green]ok[/]: {loaded.path} is a valid recipe")
    if warning:
        show_warnings([warning])
    if samples:
        _data_preview(loaded, parts, samples)
    if target is not None and not _memory(loaded, parts, *target):
        raise typer.Exit(1)


def _position_warning(loaded: Any) -> str | None:
    """max_seq_length against the model's positions, when its config can be read here (a local
    folder, the Hugging Face cache, a bundled config, or model.config): an error where the model
    cannot run past them, else a warning."""
    from framework.errors import UserError
    from framework.estimation.shapes import length_problem, model_config

    try:
        config, source = model_config(loaded.recipe.model)
    except UserError:
        return None  # unknown here (not cached); training checks the loaded model
    found = length_problem(config, loaded.recipe.data.max_seq_length, source)
    if found is None:
        return None
    message = f"{loaded.source_of('data.max_seq_length')}: {found[1]}"
    if found[0]:
        raise UserError(message)
    return message


def _data_preview(loaded: Any, parts: Any, count: int) -> None:
    """The data as training will see it: the report, the run's size, and `count` rendered rows."""
    from framework.cli.show import render_sample, run_size, samples_to_show
    from framework.training.setup import prepare

    recipe = loaded.recipe
    prep = prepare(loaded, parts)  # prints the truncation report and the packing line
    for name, value in run_size(recipe, parts, prep.packing, prep.plan, prep.data.lengths):
        console.print(f"{name}: {value}", highlight=False)
    for i, row in enumerate(samples_to_show(prep.data, count), start=1):
        console.rule(f"sample {i}: {row.tokens_before:,} tokens, {row.trainable_before:,} trained "
                     "(bold green: trained; dim: masked)")
        console.print(render_sample(prep.tokenizer, row, getattr(prep.objective, "sequence_names", ()),
                                    getattr(prep.objective, "sequence_text", None)))


def _memory(loaded: Any, parts: Any, name: str, gib: float) -> bool:
    """Print the estimate per GPU for a GPU of `gib` GiB; whether the recipe fits."""
    from framework.cli.show import estimate_table
    from framework.estimation.for_recipe import estimate_for_recipe
    from framework.estimation.hardware import gpu_label
    from framework.model.attention import separates_documents
    from framework.model.loading import recipe_shape
    from framework.registry.factories import optimizer_state_tensors

    recipe = loaded.recipe
    states, note = optimizer_state_tensors(parts.optimizer, recipe.optimizer.name)
    estimate = estimate_for_recipe(loaded, recipe_shape(recipe, parts.registry), optimizer_states=states,
                                   loss=parts.loss, documents_per_row=separates_documents(parts.packing()),
                                   objective=parts.objective())
    console.print(estimate_table(estimate, f"memory per GPU ({recipe.launch.num_processes} x {gpu_label(name, gib)})"))
    _split_line(recipe.launch, estimate.settings)
    for line in [*estimate.notes, *([note] if note else [])]:
        console.print(f"note: {line}")
    fits = estimate.fits(gib)
    verdict = "[green]fits[/]" if fits else "[red]does not fit[/]"
    console.print(f"{verdict}: {estimate.total_gib:.1f} GiB of {gib:g} GiB per GPU at max_seq_length "
                  f"{estimate.settings['max_seq_length']:,}")
    return fits


def _split_line(launch: Any, settings: dict) -> None:
    """Under sequence parallelism, what each GPU holds of a row: the table's tokens are per GPU."""
    n = launch.sequence_parallel
    if n == 1:
        return
    share = -(-settings["max_seq_length"] // n)
    groups = launch.num_processes // n
    print_line(f"sequence parallelism: {n} processes share each row; each GPU holds {share:,} of its "
               f"{settings['max_seq_length']:,} tokens (rows pad to a multiple of {n}); {groups} data-parallel "
               f"group{'s' if groups != 1 else ''} of {n}")


def register(app: typer.Typer) -> None:
    app.command("check")(check)
