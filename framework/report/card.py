"""The model card: the README.md every saved model folder gets, read by Hugging Face tools.

Its YAML front matter is the metadata the hub and `huggingface_hub.ModelCard` read (library, base
model, datasets, license, tags); its body says what a person needs to trust and reproduce the run:
the results, what truncation did to the data, the hyperparameters and hardware, and the recipe.
Nothing here touches the network: the base model's license is read from a local folder or from
the Hugging Face cache, never downloaded.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

# an "org/name" hub id; a single name (gpt2) is still a hub model id, but not asked of data sources
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
# names that are files, not repositories (a model id may hold dots: Llama-3.1-8B)
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv", ".txt", ".arrow", ".gz", ".zip",
                  ".yaml", ".yml", ".md", ".safetensors", ".bin", ".pt")


@dataclass
class CardFacts:
    """Everything the card says, gathered by the engine; plain data so a card renders anywhere."""

    run_name: str
    base_model: Optional[str]  # hub id or local path; None for a model built from a config
    base_license: Optional[str]
    datasets: list[str]  # the recipe's data sources, hub ids and local paths alike
    objective: str
    lora: bool
    recipe_yaml: str  # the resolved recipe, saved next to the model as recipe.yaml
    data: dict  # the truncation report (framework.data.tokenize.Report as a dict)
    hyperparameters: dict[str, object] = field(default_factory=dict)
    results: dict[str, float] = field(default_factory=dict)
    hardware: str = ""
    loss_curve: Optional[str] = None  # an image file name next to the README
    seqtune_version: str = ""
    merged: bool = False  # a LoRA run's merged folder: full weights, no adapter
    best: Optional[dict] = None  # output_dir/best: the step and evaluation it was kept for
    trained_rows: Optional[int] = None  # rows of the mixture trained on: data's rows_kept less those held out
    # the held-out evaluation: {"rows": evaluated rows, "split": held out of the training mixture, "sources": [...]}
    evaluation: Optional[dict] = None
    started_in: Optional[str] = None  # the directory the run started in: the recipe's relative paths start there
    recipe_path: Optional[str] = None  # the saved recipe.yaml, absolute
    reproduce_overrides: list[str] = field(default_factory=list)  # what a reproduction adds (another output_dir)


def _is_hub_id(name: str, need_org: bool) -> bool:
    if not name or name.startswith((".", "/", "~")) or name.lower().endswith(_FILE_SUFFIXES):
        return False
    if need_org and name.count("/") != 1:
        return False
    return bool(_HUB_ID.match(name)) and not Path(name).exists()


def dataset_ids(sources: list[str]) -> list[str]:
    """The sources that are hub datasets ("org/name"); local files stay out of the metadata."""
    return [source for source in sources if _is_hub_id(source, need_org=True)]


def _readme_license(readme: Path) -> Optional[str]:
    from huggingface_hub import ModelCard

    # a Path, never a str: ModelCard.load downloads a str that is not a file
    value = ModelCard.load(Path(readme), ignore_metadata_errors=True).data.license
    return value if isinstance(value, str) and value else None


def base_license(base_model: Optional[str]) -> Optional[str]:
    """The starting model's license as far as it can be read offline; None when it cannot."""
    if not base_model:
        return None
    try:
        local = Path(base_model).expanduser()
        if local.is_dir():
            readme = local / "README.md"
            return _readme_license(readme) if readme.is_file() else None
        if not _is_hub_id(base_model, need_org=False):
            return None
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base_model, "README.md")
        # a str is the cached file; None (never fetched) and the "known missing" sentinel are not
        return _readme_license(Path(cached)) if isinstance(cached, str) else None
    except Exception:  # a card is never worth failing a finished run over
        return None


def _metadata(facts: CardFacts) -> dict:
    meta: dict = {"library_name": "peft" if facts.lora and not facts.merged else "transformers"}
    if facts.base_model and _is_hub_id(facts.base_model, need_org=False):
        meta["base_model"] = facts.base_model
    hub_data = dataset_ids(facts.datasets)
    if hub_data:
        meta["datasets"] = hub_data
    if facts.base_license:
        meta["license"] = facts.base_license
    meta["tags"] = ["seqtune", facts.objective] + (["lora"] if facts.lora else [])
    meta["pipeline_tag"] = "text-generation"
    return meta


def _num(value: object, key: str = "") -> str:
    """A number as a person reads it: losses to 4 significant digits, counts with separators."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value is None else str(value)
    if key.endswith("seconds"):
        return _duration(float(value))
    if key.endswith("gib"):
        return f"{value:.2f} GiB"
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    return f"{value:.4g}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{seconds:,.0f} s ({hours}h {minutes:02d}m)"
    return f"{seconds:.1f} s" + (f" ({minutes}m {secs:02d}s)" if minutes else "")


def _table(rows: dict, header: tuple[str, str]) -> list[str]:
    def cell(text: object) -> str:  # a "|" would end the cell early
        return str(text).replace("|", "\\|")

    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {cell(_label(key))} | {cell(_num(value, key))} |" for key, value in rows.items()]
    return lines


def _label(key: str) -> str:
    """train_seconds -> train time, peak_memory_gib -> peak memory: the value cell carries the unit."""
    if key.endswith("_seconds"):
        key = key[: -len("_seconds")] + "_time"
    elif key.endswith("_gib"):
        key = key[: -len("_gib")]
    return key.replace("_", " ")


def _link(source: str, kind: str) -> str:
    if _is_hub_id(source, need_org=kind == "datasets"):
        prefix = "datasets/" if kind == "datasets" else ""
        return f"[{source}](https://huggingface.co/{prefix}{source})"
    return f"`{source}`"


def _summary(facts: CardFacts) -> str:
    start = (f"Fine-tuned from {_link(facts.base_model, 'models')}" if facts.base_model
             else "Trained from a model built from its config (random initialization)")
    method = "full fine-tuning"
    if facts.lora:
        method = "LoRA, merged into the weights" if facts.merged else "LoRA adapters"
    sources = ", ".join(_link(s, "datasets") for s in facts.datasets) or "the recipe's data"
    adapter = (" The folder holds the adapter; peft loads it over the base model"
               + (f" (`adapter_config.json` names it: `{facts.base_model}`)." if facts.base_model else ".")
               if facts.lora and not facts.merged else "")
    kept = (f" This folder holds the model after step {facts.best['step']:,}, the lowest eval_loss of the run "
            f"({facts.best['eval_loss']:.4g}); the run's final model is the folder above." if facts.best else "")
    return (f"{start} with seqtune ({facts.objective}, {method}){_rows(facts)} from {sources}."
            f"{_evaluated(facts)}{adapter}{kept}")


def _rows(facts: CardFacts) -> str:
    """` on 180 rows (of 200: 20 held out for evaluation)`: what trained, and where the others went."""
    data = facts.data
    if "rows_kept" not in data or "rows_in" not in data:
        return ""
    trained = data["rows_kept"] if facts.trained_rows is None else facts.trained_rows
    gone = [f"{n:,} {why}" for n, why in ((data["rows_in"] - data["rows_kept"], "dropped in preprocessing"),
                                          (data["rows_kept"] - trained, "held out for evaluation")) if n]
    return f" on {trained:,} rows" + (f" (of {data['rows_in']:,}: {', '.join(gone)})" if gone else "")


def _evaluated(facts: CardFacts) -> str:
    evaluation = facts.evaluation
    if not evaluation:
        return ""
    if evaluation.get("split"):
        return f" Evaluated on {evaluation['rows']:,} held-out rows of the same data (eval.split), never trained on."
    sources = ", ".join(_link(s, "datasets") for s in evaluation.get("sources", [])) or "its own data"
    return f" Evaluated on {evaluation['rows']:,} rows of {sources}."


def _share(lost: object, total: object) -> str:
    if not isinstance(lost, int) or not isinstance(total, int):
        return _num(lost)
    return f"{lost:,} of {total:,} ({lost / max(total, 1):.2%})"


def _data_section(facts: CardFacts) -> list[str]:
    data = facts.data
    lines = ["## Data", ""]
    if "max_seq_length" in data:
        lines.append(f"- max_seq_length: {_num(data['max_seq_length'])}")
    counts = [f"{data[k]:,} {k[5:]}" for k in ("rows_kept", "rows_truncated", "rows_dropped")
              if isinstance(data.get(k), int)]
    if "rows_in" in data:
        lines.append(f"- rows: {_num(data['rows_in'])} in" + (f"; {', '.join(counts)}" if counts else ""))
    causes = {k: n for k, n in (data.get("dropped") or {}).items() if n}
    if causes:
        lines.append("- dropped: " + ", ".join(f"{n:,} {k.replace('_', ' ')}" for k, n in causes.items()))
    if "tokens_lost" in data:
        lines.append(f"- tokens lost to truncation: {_share(data['tokens_lost'], data.get('tokens_in'))}")
    if "trainable_tokens_lost" in data:
        lost, total = data["trainable_tokens_lost"], data.get("trainable_tokens_in")
        lines.append(f"- trainable tokens lost: {_share(lost, total)}")
    if facts.trained_rows is not None:
        lines.append(f"- trained on: {facts.trained_rows:,} rows" + _held_out(facts))
    lines += ["", "Sources:", ""] + [f"- {_link(s, 'datasets')}" for s in facts.datasets]
    return lines


def _held_out(facts: CardFacts) -> str:
    held = facts.data.get("rows_kept", facts.trained_rows) - facts.trained_rows
    return f"; {held:,} held out for evaluation (eval.split), never trained on" if held else ""


def _reproduce(facts: CardFacts) -> list[str]:
    """The command that trains this recipe again, from where its relative paths start."""
    if not facts.started_in or not facts.recipe_path:
        return ["Reproduce: `seqtune train recipe.yaml` (this recipe, saved with the run), from the directory the "
                "run started in: the recipe's relative paths start there."]
    command = " ".join(["seqtune train", *map(shlex.quote, [facts.recipe_path, *facts.reproduce_overrides])])
    return ["Reproduce (the recipe's relative paths start in the directory the run started in; the recipe's own "
            "output_dir holds this run, finished, so the command names another):", "",
            "```bash", f"cd {shlex.quote(facts.started_in)}", command, "```"]


def _versions(facts: CardFacts) -> list[str]:
    lines = ["## Framework versions", "", f"- seqtune {facts.seqtune_version or 'unknown'}"]
    for package in ("transformers", "torch") + (("peft",) if facts.lora else ()):
        try:
            lines.append(f"- {package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f"- {package} not installed")
    return lines


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`{3,}", text)), default=2)
    return "`" * max(3, longest + 1)  # longer than any fence the recipe holds


def render(facts: CardFacts) -> str:
    """The README.md text: YAML front matter for the hub, then the card a person reads."""
    front = yaml.safe_dump(_metadata(facts), sort_keys=False, allow_unicode=True, default_flow_style=False)
    body = [f"# {facts.run_name}", "", _summary(facts), ""]
    if facts.results:
        body += ["## Results", ""] + _table(facts.results, ("metric", "value")) + [""]
    if facts.loss_curve:
        body += [f"![loss curve]({facts.loss_curve})", ""]
    body += _data_section(facts) + [""]
    body += ["## Training", ""]
    if facts.hyperparameters:
        body += _table(facts.hyperparameters, ("hyperparameter", "value")) + [""]
    hardware = f"Hardware: {facts.hardware or 'unknown'}"
    if isinstance(facts.results.get("train_seconds"), (int, float)):
        hardware += f"; training time: {_duration(float(facts.results['train_seconds']))}"
    body.append(hardware)
    fence = _fence(facts.recipe_yaml)
    body += ["", "## Recipe", "", *_reproduce(facts), "", f"{fence}yaml", facts.recipe_yaml.rstrip("\n"), fence, ""]
    body += _versions(facts)
    return f"---\n{front}---\n\n" + "\n".join(body) + "\n"


def write_card(folder: Path, facts: CardFacts) -> Path:
    """Write folder/README.md atomically: a reader never sees half a card, a crash leaves the old one."""
    folder = Path(folder)
    target = folder / "README.md"
    temp = folder / f".README.md.{os.getpid()}.tmp"  # same folder: os.replace is then a rename
    try:
        temp.write_text(render(facts), encoding="utf-8")
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return target
