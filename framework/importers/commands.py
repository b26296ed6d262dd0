"""Reading a training command as people write it: argument lists, or shell scripts with `\\` line
continuations, `VAR=value` lines and `$VAR` / `${VAR}` references; split into the `accelerate launch`
flags, the training script, and the script's flags."""
from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field

from framework.errors import UserError

_ASSIGNMENT = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_REFERENCE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass
class Command:
    """A training command: what launches it, the script it runs, and both sets of flags in order."""

    script: str  # e.g. open_instruct/finetune.py
    launcher: list[tuple[str, list[str]]] = field(default_factory=list)  # accelerate launch's flags
    flags: list[tuple[str, list[str]]] = field(default_factory=list)  # the script's flags
    text: str = ""  # the command as one line, for the recipe's header


def words_of_script(text: str, where: str) -> list[str]:
    """The words of the first command in a shell script that runs `accelerate launch` (or python):
    continuations joined, comments dropped, variables set in the script or the environment expanded."""
    variables = dict(os.environ)
    lines = text.replace("\\\n", " ").splitlines()
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assigned = _ASSIGNMENT.match(line)
        if assigned and " " not in assigned.group(2).strip().strip("'\""):
            variables[assigned.group(1)] = _expand(shlex.split(assigned.group(2))[0] if assigned.group(2) else "",
                                                   variables, where, number)
            continue
        if "accelerate" in line or ".py" in line:
            return shlex.split(_expand(line, variables, where, number), comments=True)
    raise UserError(f"{where}: no `accelerate launch` or python command found")


def _expand(text: str, variables: dict[str, str], where: str, number: int) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise UserError(f"{where}:{number}: ${name} is not set in the script or the environment; "
                            f"export {name}=... first")
        return variables[name]

    return _REFERENCE.sub(value, text)


def parse_command(words: list[str], scripts: tuple[str, ...]) -> Command:
    """The launcher's flags, the script (the first word ending in one of `scripts`) and its flags."""
    at = next((i for i, word in enumerate(words) if word.endswith(scripts)), None)
    if at is None:
        raise UserError(f"the command runs none of {', '.join(scripts)}; give an open-instruct training command")
    before = words[:at]
    start = next((i + 1 for i, word in enumerate(before) if word == "launch"), len(before))
    launcher = _flags(before[start:]) if "accelerate" in " ".join(before) else []
    return Command(words[at], launcher, _flags(words[at + 1:]), shlex.join(words))


def _flags(words: list[str]) -> list[tuple[str, list[str]]]:
    """`--name value ...` pairs in order (`--name=value` too); a flag's values run to the next flag;
    names are spelt with underscores whatever the command used."""
    found: list[tuple[str, list[str]]] = []
    for word in words:
        if word.startswith("--"):
            name, _, value = word[2:].partition("=")
            found.append((name.replace("-", "_"), [value] if value else []))
        elif found:
            found[-1][1].append(word)
        else:
            raise UserError(f"'{word}' comes before any flag; a flag starts with --")
    return found
