"""The imported recipe as YAML the way the bundled recipes read: a header with the command and what
was not carried over, then each key with the flag it came from as a comment."""
from __future__ import annotations

from typing import Any, Callable

from framework.importers.commands import Command
from framework.importers.flags import Draft

TOP = ("run_name", "output_dir", "seed")
SECTIONS = ("model", "tokenizer", "objective", "data", "train", "optimizer", "scheduler", "checkpoint", "logging",
            "launch", "lora")
COMMENT_AT = 43  # the column comments start at, as in the bundled recipes


def render(draft: Draft, command: Command, target: str) -> str:
    """The recipe: a header with the command and the warnings, then every key with its flag."""
    lines = [f"# seqtune train {target}", "#", "# Imported by `seqtune import open-instruct` from:", "#"]
    lines += [f"#   {line}" for line in _wrapped(command.text)]
    if draft.warnings:
        lines += ["#", "# Not carried over (check these before you train):"]
        lines += [f"#   - {warning}" for warning in draft.warnings]
    lines.append("")
    values = draft.values
    lines += [_line(key, values[key], draft.comments[key], 0) for key in TOP if key in values]
    for section in SECTIONS:
        keys = [key for key in values if key == section or key.startswith(section + ".")]
        if not keys:
            continue
        lines.append("")
        if keys == [section]:  # a whole mapping at once: objective, lora
            lines.append(_line(section, values[section], draft.comments[section], 0))
            continue
        lines.append(f"{section}:")
        for key in sorted(keys, key=_schema_order(section)):
            lines += _entry(key.split(".", 1)[1], values[key], draft.comments[key])
    return "\n".join(lines) + "\n"


def _schema_order(section: str) -> Callable[[str], int]:
    """Keys in the order the schema declares them (a plugin's `name` first, then its options)."""
    import dataclasses
    import typing

    from framework.config.schema import Recipe

    kind = typing.get_type_hints(Recipe)[section]
    kind = next((arg for arg in typing.get_args(kind) if dataclasses.is_dataclass(arg)), kind)
    names = [f.name for f in dataclasses.fields(kind)] if dataclasses.is_dataclass(kind) else ["name"]
    return lambda key: names.index(key.split(".")[1]) if key.split(".")[1] in names else len(names)


def _entry(name: str, value: Any, comment: str) -> list[str]:
    if isinstance(value, list) and value and isinstance(value[0], dict):  # data.mixture: one entry a line
        return [_pad(f"  {name}:", comment)] + [f"    - {_flow(item)}" for item in value]
    return [_line(name, value, comment, 2)]


def _line(name: str, value: Any, comment: str, indent: int) -> str:
    return _pad(f"{' ' * indent}{name}: {_flow(value)}", comment)


def _pad(text: str, comment: str) -> str:
    return f"{text:<{COMMENT_AT}}# {comment}" if comment else text


def _flow(value: Any) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=1000, sort_keys=False).strip()
    return text[:-4].strip() if text.endswith("\n...") else text


def _wrapped(text: str, width: int = 96) -> list[str]:
    lines, current = [], ""
    for word in text.split(" "):
        if current and len(current) + len(word) + 1 > width:
            lines.append(current + " \\")
            current = "  " + word
        else:
            current = f"{current} {word}" if current else word
    return lines + [current]
