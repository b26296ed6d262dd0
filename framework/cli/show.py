"""What the commands show: the resolved recipe as a tree, the memory estimate as a table, rows as the
model sees them (`check --samples`), and the run's size. Display only; the commands decide."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from rich.markup import escape
from rich.text import Text

from framework.config.schema import Component
from framework.registry import declared
from framework.types import IGNORE_INDEX, Sample


def recipe_tree(loaded: Any, registry: Any = None):
    """The resolved recipe as a tree; each value says whether a file, an override or a default set it,
    and each plugin selection which plugin (and distribution) provides it."""
    from rich.tree import Tree

    tree = Tree(f"[bold]{loaded.path}[/]")
    providers = ({entry.name: f"{entry.plugin}, {entry.distribution}" for entry in registry.all_entries()}
                 if registry else {})
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


def estimate_table(estimate: Any, title: str):
    """The memory estimate per GPU: each part, its size and how it was computed."""
    from rich.table import Table

    table = Table(title=title)
    for column in ("part", "GiB", "how"):
        table.add_column(column)
    for part, amount, how in estimate.rows():
        table.add_row(part, amount, how)
    return table


@dataclass
class Shown:
    """A row as training sees it (`kept`), and how long it was before truncation."""

    kept: Sample
    tokens_before: int
    trainable_before: int

    @property
    def cut(self) -> bool:
        return len(self.kept.input_ids) < self.tokens_before


def render_sample(tokenizer: Any, row: Shown, names: tuple[str, ...] = (), text_of: Any = None) -> Text:
    """Trained tokens bold green, masked tokens dim, and where truncation cut the row. A row of several
    sequences (a pair) shows each under its name (the objective's `sequence_names`); a sequence that is
    not tokens (GRPO's reference answer) as the objective's `sequence_text(k, sample)` says."""
    text = Text()
    parts = row.kept.split()
    for k, part in enumerate(parts):
        shown = text_of(k, part) if text_of is not None else None
        if len(parts) > 1:
            name = names[k] if k < len(names) else f"sequence {k + 1}"
            size = (f"{len(shown):,} characters" if shown is not None
                    else f"{len(part.input_ids):,} tokens, {part.num_trainable:,} trained")
            text.append(f"{chr(10) if k else ''}[{name}: {size}]\n", style="bold")
        if shown is not None:
            text.append(shown, style="italic")
            continue
        for token, label in zip(part.input_ids, part.labels):
            text.append(tokenizer.decode([token]), style="bold green" if label != IGNORE_INDEX else "dim")
    if row.cut:
        lost = row.trainable_before - row.kept.num_trainable
        text.append(f" ✂ [cut here: {row.tokens_before - len(row.kept.input_ids):,} tokens and {lost:,} "
                    "trainable tokens dropped]", style="bold red")
    return text


def samples_to_show(data: Any, count: int) -> list[Shown]:
    """Up to `count` of the prepared rows, from the first in training order, about half of them rows
    that truncation cut, when it cut any: those are what a user checks. Read from the cache."""
    candidates = data.dataset.select(range(min(20 * count, len(data.dataset)))).to_dict()
    rows = [Shown(Sample(ids, labels, tuple(sequences)), before, trainable) for ids, labels, sequences, before, trainable
            in zip(candidates["input_ids"], candidates["labels"], candidates["sequences"], candidates["length_before"],
                   candidates["trainable_before"])]
    shown = [row for row in rows if row.cut][:(count + 1) // 2]
    return shown + [row for row in rows if not row.cut][:count - len(shown)]


def run_size(recipe: Any, parts: Any, packing: Any, plan: Any, lengths: list[int]) -> list[tuple[str, str]]:
    """Effective batch, tokens per optimizer step, steps and warmup steps, as (name, value) rows; what
    a plugin decides (warmup, how rows fill) is what it declares."""
    train, launch = recipe.train, recipe.launch
    groups = launch.num_processes // launch.sequence_parallel  # the processes of a group share its rows
    batch = train.per_device_batch_size * train.gradient_accumulation_steps * groups
    over = (f"{launch.num_processes} processes" if launch.sequence_parallel == 1 else
            f"{groups} data-parallel group{'s' if groups != 1 else ''} of {launch.sequence_parallel} processes")
    warmup = declared(parts.scheduler, "warmup_steps", plan.total_steps)
    warmup_text = f"{warmup:,}" if warmup is not None else \
        f"unknown (scheduler '{recipe.scheduler.name}' declares no warmup_steps)"
    tokens = sum(lengths) * len(plan.epochs) / max(plan.total_steps, 1)
    unit = "packed rows" if getattr(packing, "packs_rows", False) else "rows"
    return [("effective batch", f"{batch:,} {unit} ({train.per_device_batch_size} x "
                                f"{train.gradient_accumulation_steps} accumulation x {over})"),
            ("tokens per optimizer step", f"{tokens:,.0f} on average"),
            ("optimizer steps", f"{plan.total_steps:,} ({len(plan.epochs)} epoch(s))"),
            ("warmup steps", warmup_text),
            ("packing efficiency", f"{plan.efficiency:.2%}")]
