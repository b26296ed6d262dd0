"""Reading a training command as people write it: argument lists, or shell scripts with `\\` line
continuations, `VAR=value` lines and `$VAR` / `${VAR}` references; split into the `accelerate launch`
flags, the training script, and the script's flags."""
from __future__ import annotations

import ast
import operator
import os
import re
import shlex
from dataclasses import dataclass, field

from framework.errors import UserError

_ASSIGNMENT = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_ARITHMETIC = re.compile(r"\$\(\((.*?)\)\)")
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
    continuations joined, comments dropped, `VAR=value` lines and the environment's variables expanded,
    integer `$((...))` arithmetic evaluated."""
    variables = dict(os.environ)
    # a script may end in a continuation; bash drops that backslash
    lines = text.rstrip().removesuffix("\\").replace("\\\n", " ").splitlines()
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assigned = _ASSIGNMENT.match(line)
        if assigned and _assign(assigned.group(1), assigned.group(2), variables, where, number):
            continue
        if "accelerate" in line or ".py" in line:
            try:
                return shlex.split(_expand(line, variables, where, number), comments=True)
            except ValueError as exc:  # an unclosed quote
                raise UserError(f"{where}:{number}: cannot split the command into words ({exc})") from None
    raise UserError(f"{where}: no `accelerate launch` or python command found")


def _assign(name: str, raw: str, variables: dict[str, str], where: str, number: int) -> bool:
    """Record `name=raw`; False when the line is a command with a variable in front (`X=1 cmd`)."""
    raw = raw.strip()
    if raw.startswith("$((") and raw.endswith("))"):
        variables[name] = _expand(raw, variables, where, number)
        return True
    words = shlex.split(raw) if raw else [""]
    if len(words) != 1:
        return False
    variables[name] = _expand(words[0], variables, where, number)
    return True


def _expand(text: str, variables: dict[str, str], where: str, number: int) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise UserError(f"{where}:{number}: ${name} is not set in the script or the environment; "
                            f"export {name}=... first")
        return variables[name]

    def arithmetic(match: re.Match) -> str:
        expression = re.sub(r"\b[A-Za-z_]\w*\b", lambda m: variables.get(m.group(0), m.group(0)),
                            _REFERENCE.sub(value, match.group(1)))
        try:
            return str(_integer(ast.parse(expression.replace("/", "//"), mode="eval").body))
        except (SyntaxError, ValueError, ZeroDivisionError):
            raise UserError(f"{where}:{number}: $(({match.group(1)})) is not integer arithmetic seqtune can "
                            "read") from None

    return _REFERENCE.sub(value, _ARITHMETIC.sub(arithmetic, text))


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


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
              ast.Mod: operator.mod}


def _integer(node: ast.AST) -> int:
    """The value of shell integer arithmetic (+ - * / %, parentheses), parsed, never executed."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_integer(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_integer(node.left), _integer(node.right))
    raise ValueError("not integer arithmetic")
