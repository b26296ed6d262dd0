"""`seqtune check`: validate a recipe without training and show it resolved."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

import typer

from framework.cli.common import OVERRIDES_HELP, RECIPE_HELP, console, user_errors
from framework.config.schema import Component


@user_errors
def check(recipe: str = typer.Argument(..., help=RECIPE_HELP),
          overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
          gpu: Optional[str] = typer.Option(None, "--gpu", help="Plan memory for this GPU: "
                                            "3090, 4090, a100-40, a100-80, h100, h200, or its memory in GiB."),
          samples: int = typer.Option(0, "--samples", help="Preprocess the data (cached) and show N rows as "
                                      "the model sees them, the truncation report and the run's size.")) -> None:
    """Validate a recipe and its plugin options and print it resolved; with --gpu, also the memory
    plan per GPU. Exit 0 when valid (and it fits), 1 when it does not fit, 2 when invalid."""
    from framework.components import bind_parts
    from framework.config import load_recipe

    target = gpu_memory(gpu) if gpu is not None else None  # a bad --gpu is an error before any output
    loaded = load_recipe(recipe, overrides or [])
    parts = bind_parts(loaded)
    console.print(recipe_tree(loaded, parts.registry))
    console.print(f"[green]ok[/]: {loaded.path} is a valid recipe")
    if samples:
        data_preview(loaded, parts, samples)
    if target is not None and not memory_plan(loaded, *target):
        raise typer.Exit(1)


def data_preview(loaded: Any, parts: Any, count: int) -> None:
    """The data as training will see it: the report, the run's size, and `count` rendered rows."""
    from framework.engine import prepare
    from framework.preview import render_sample, run_size, samples_to_show

    recipe = loaded.recipe
    prep = prepare(loaded, parts)  # prints the truncation report and the packing line
    for name, value in run_size(recipe, prep.plan, prep.data.lengths):
        console.print(f"{name}: {value}", highlight=False)
    mixture = prep.data.build_mixture()
    rows = mixture.select(range(min(20 * count, len(mixture))))  # a few candidates, in training order
    chats = [row["messages"] for row in rows if row["text"] is None]
    candidates = samples_to_show(prep.tokenizer, chats, parts.truncation, recipe.data.max_seq_length,
                                 recipe.data.train_on)
    cut = [c for c in candidates if c[1] is None or len(c[1].input_ids) < len(c[0].input_ids)]
    shown = cut[:(count + 1) // 2]  # show what truncation does, when it does anything
    shown += [c for c in candidates if c not in shown][:count - len(shown)]
    for i, (full, kept) in enumerate(shown, start=1):
        console.rule(f"sample {i}: {len(full.input_ids):,} tokens, {full.num_trainable:,} trained "
                     "(bold green: trained; dim: masked)")
        console.print(render_sample(prep.tokenizer, full, kept))


def memory_plan(loaded: Any, name: str, gib: float) -> bool:
    """Print the plan per GPU for a GPU of `gib` GiB; whether the recipe fits."""
    from rich.table import Table

    from framework.memory import plan_from_recipe

    recipe = loaded.recipe
    plan = plan_from_recipe(loaded, shape=shape_of(recipe))
    table = Table(title=f"memory per GPU ({recipe.launch.num_processes} x {name}, {gib:g} GiB)")
    for column in ("part", "GiB", "how"):
        table.add_column(column)
    for part, amount, how in plan.rows():
        table.add_row(part, amount, how)
    console.print(table)
    for note in plan.notes:
        console.print(f"note: {note}")
    fits = plan.fits(gib)
    verdict = "[green]fits[/]" if fits else "[red]does not fit[/]"
    console.print(f"{verdict}: {plan.total_gib:.1f} GiB of {gib:g} GiB per GPU at max_seq_length "
                  f"{recipe.data.max_seq_length:,}")
    return fits


def gpu_memory(gpu: str) -> tuple[str, float]:
    from framework.errors import UserError, did_you_mean
    from framework.hardware import GPUS

    if gpu.lower() in GPUS:
        found = GPUS[gpu.lower()]
        return found.name, found.memory_gib
    try:
        return "GPU", float(gpu)
    except ValueError:
        prefixed = [key for key in GPUS if key.startswith(gpu.lower())]
        hint = f"; did you mean one of: {', '.join(prefixed)}?" if prefixed else did_you_mean(gpu.lower(), GPUS)
        raise UserError(f"--gpu: unknown GPU '{gpu}'{hint} (or give its memory in GiB, e.g. --gpu 24)") from None


def shape_of(recipe: Any) -> Any:
    """The model's shape; a model built from a config takes its vocabulary from the tokenizer."""
    from framework.memory import load_shape
    from framework.modeling import load_tokenizer
    from framework.registry import build_registry

    config = recipe.model.config
    vocab = None
    if config and "vocab_size" not in config:  # the recipe may name a template: give it the registered ones
        vocab = len(load_tokenizer(recipe, build_registry(recipe.plugins).entries["chat_templates"]))
    return load_shape(recipe.model, vocab_size=vocab)


def recipe_tree(loaded: Any, registry: Any = None):
    """The resolved recipe as a tree; each value says whether a file, an override or a default set it,
    and each plugin selection which plugin (and distribution) provides it."""
    from rich.tree import Tree

    tree = Tree(f"[bold]{loaded.path}[/]")
    providers = {entry.name: f"{entry.plugin}, {entry.distribution}" for entry in registry.all_entries()} if registry else {}
    _add(tree, loaded.recipe, "", loaded.provenance, providers)
    return tree


def _add(node: Any, value: Any, path: str, provenance: dict[str, str], providers: dict[str, str]) -> None:
    if dataclasses.is_dataclass(value) and not isinstance(value, Component):
        for f in dataclasses.fields(value):
            _add_child(node, f.name, getattr(value, f.name), f"{path}.{f.name}".lstrip("."), provenance, providers)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _add_child(node, f"[{i}]", item, f"{path}[{i}]", provenance, providers)


def _add_child(node: Any, label: str, value: Any, path: str, provenance: dict[str, str],
               providers: dict[str, str]) -> None:
    from rich.markup import escape

    source = provenance.get(path)
    tag = f"  [dim]({escape(source)})[/]" if source else "  [dim italic](default)[/]"
    if isinstance(value, Component):
        options = ", ".join(f"{k}={json.dumps(v)}" for k, v in value.options.items())
        provider = f" [magenta]<- {escape(providers[value.name])}[/]" if value.name in providers else ""
        node.add(f"{label}: [cyan]{escape(value.name)}[/]{escape(f' ({options})') if options else ''}{provider}{tag}")
    elif dataclasses.is_dataclass(value) or (isinstance(value, list) and value and not
                                             isinstance(value[0], (str, int, float))):
        _add(node.add(f"[bold]{label}[/]{tag if source else ''}"), value, path, provenance, providers)
    else:
        node.add(f"{label}: [cyan]{escape(json.dumps(value))}[/]{tag}")  # YAML-like: null, true


def register(app: typer.Typer) -> None:
    app.command("check")(check)
