"""The imported recipe as YAML the way the bundled recipes read: a header with the command and what
was not carried over, then each key with the flag it came from as a comment. Every value is written so
that seqtune (omegaconf) reads back exactly the value the importer mapped: a comment never touches it,
and it is quoted or escaped where omegaconf would read it otherwise."""
from __future__ import annotations

import math
import re
from typing import Any, Callable

import yaml
from omegaconf import OmegaConf

from framework.errors import UserError
from framework.importers.commands import Command
from framework.importers.flags import Draft

TOP = ("run_name", "output_dir", "seed")
SECTIONS = ("model", "tokenizer", "objective", "data", "train", "optimizer", "scheduler", "checkpoint", "logging",
            "launch", "lora")
COMMENT_AT = 43  # the column comments start at, as in the bundled recipes


def render(draft: Draft, command: Command, target: str) -> str:
    """The recipe: a header with the command and the warnings, then every key with its flag."""
    lines = [f"# seqtune train {target}", "#", "# Imported by `seqtune import open-instruct` from:", "#"]
    lines += [f"#   {line}" for line in _wrapped(_one_line(command.text))]
    if draft.warnings:
        lines += ["#", "# Not carried over (check these before you train):"]
        lines += [f"#   - {_one_line(warning)}" for warning in draft.warnings]
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
        return [_pad(f"  {name}:", comment)] + [f"    - {_flow(item, comment)}" for item in value]
    return [_line(name, value, comment, 2)]


def _line(name: str, value: Any, comment: str, indent: int) -> str:
    return _pad(f"{' ' * indent}{name}: {_flow(value, comment)}", comment)


def _pad(text: str, comment: str) -> str:
    """The comment at COMMENT_AT, or two spaces after a longer line: YAML reads a `#` with no space
    before it as part of the value."""
    return f"{text:<{COMMENT_AT - 2}}  # {_one_line(comment)}" if comment else text


def _one_line(text: str) -> str:
    """A comment ends at a line break: a value's newline must not start an uncommented line."""
    return " ".join(text.splitlines())


class _Quoted(yaml.SafeDumper):
    """Every string double-quoted, line breaks and all escaped: the form any string reads back from."""


_Quoted.add_representer(str, lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style='"'))


def _flow(value: Any, comment: str) -> str:
    """`value` as one line of YAML that omegaconf reads back equal: plain where PyYAML's plain form does
    (omegaconf reads `1e5` as a number, which PyYAML writes plain), else every string double-quoted."""
    escaped = _escaped(value)
    for dumper in (yaml.SafeDumper, _Quoted):
        text = yaml.dump(escaped, Dumper=dumper, default_flow_style=True, width=math.inf, allow_unicode=True,
                         sort_keys=False).strip()
        text = text[:-4].strip() if text.endswith("\n...") else text
        if "\n" not in text and _reads_back(text, value):
            return text
    raise UserError(f"{comment.split(' ')[0] or 'a value'}: {value!r} cannot be written in a recipe (omegaconf "
                    "reads it as something else)")


def _escaped(value: Any) -> Any:
    """Strings with `${` escaped, so omegaconf reads them literally, not as interpolations: `\\${`
    (backslashes before it doubled, as omegaconf reads a backslash there as an escape)."""
    if isinstance(value, str):
        return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, dict):
        return {key: _escaped(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_escaped(item) for item in value]
    return value


def _reads_back(text: str, value: Any) -> bool:
    try:  # as seqtune reads a recipe: OmegaConf.load's YAML, interpolations resolved, `???` missing
        read = OmegaConf.to_container(OmegaConf.create(f"v: {text}"), resolve=True, throw_on_missing=True)["v"]
    except Exception:  # noqa: BLE001 - any failure to read it back means: not this form
        return False
    return _same(read, value)


def _same(read: Any, value: Any) -> bool:
    """Equal and of the same types all the way down (`2` is not `2.0`, `"1e5"` is not `100000.0`)."""
    if type(read) is not type(value):
        return False
    if isinstance(value, dict):
        return list(read) == list(value) and all(_same(read[key], value[key]) for key in value)
    if isinstance(value, list):
        return len(read) == len(value) and all(_same(a, b) for a, b in zip(read, value))
    return read == value or (isinstance(value, float) and math.isnan(value) and math.isnan(read))


def _wrapped(text: str, width: int = 96) -> list[str]:
    lines, current = [], ""
    for word in text.split(" "):
        if current and len(current) + len(word) + 1 > width:
            lines.append(current + " \\")
            current = "  " + word
        else:
            current = f"{current} {word}" if current else word
    return lines + [current]
