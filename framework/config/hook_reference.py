"""Render docs/plugin-hooks.md, the plugin hook reference, from `framework/hookspecs.py`.

The page is generated so it cannot drift from the contract: it reads the real module with
`inspect`, so a new hook appears on the next run. `python -m framework.config.hook_reference`
rewrites the page and `--check` fails when the committed one is stale.
"""
from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from framework import hookspecs
from framework.config.reference import generate

ROOT = Path(__file__).resolve().parents[2]  # the repository root, where docs/ lives
PAGE = "docs/plugin-hooks.md"
REGISTRATION_PREFIX = "seqtune_register_"

TITLE = """\
# Plugin hooks

<!-- Generated from framework/hookspecs.py by `python -m framework.config.hook_reference`; do not edit. -->
"""

REGISTRATION_INTRO = """\
Each returns a `{{name: factory}}` map for one family; the return type `Factories` is
`{factories}`. Every implementation is called and the maps are merged; a name registered twice is
an error naming both plugins."""

LIFECYCLE_INTRO = """\
Observer calls the engine makes on the main process only, to every plugin and to the loggers the
recipe selects. Their return values are ignored."""


def render() -> str:
    """The hook reference: title, intro, the module docstring, then one section per hook."""
    summary, _, body = inspect.getdoc(hookspecs).partition("\n")
    specs = hooks()
    registration = [f for f in specs if f.__name__.startswith(REGISTRATION_PREFIX)]
    lifecycle = [f for f in specs if not f.__name__.startswith(REGISTRATION_PREFIX)]
    names = {f.__name__ for f in specs}
    sections = [TITLE.rstrip(), _intro(summary, registration, lifecycle),
                "## The contract\n\n" + _link_hooks(_markdown(body.strip()), names),
                "## Registration hooks\n\n" + REGISTRATION_INTRO.format(factories=_factories_type())]
    sections += [_hook_section(f, names) for f in registration]
    sections.append("## Lifecycle hooks\n\n" + LIFECYCLE_INTRO)
    sections += [_hook_section(f, names) for f in lifecycle]
    return "\n\n".join(sections) + "\n"


def hooks() -> list[Callable[..., Any]]:
    """Every hook spec in `framework.hookspecs`, in source order."""
    marker = f"{hookspecs.hookspec.project_name}_spec"  # the attribute pluggy sets on a spec
    found = [f for _, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, marker)]
    return sorted(found, key=lambda f: f.__code__.co_firstlineno)


def outputs() -> dict[str, str]:
    """The generated file's text by path relative to the repository root."""
    return {PAGE: render()}


def main(argv: list[str] | None = None) -> int:
    return generate(outputs(), argv, "framework.config.hook_reference", "the plugin hook reference",
                    "framework/hookspecs.py", ROOT)


# --- page parts ------------------------------------------------------------------------------

def _intro(summary: str, registration: list[Callable], lifecycle: list[Callable]) -> str:
    def index(fns: list[Callable]) -> str:
        return ", ".join(f"[`{f.__name__}`](#{f.__name__})" for f in fns)

    return (f"{summary} Generated from [`framework/hookspecs.py`](../framework/hookspecs.py); "
            "[Writing plugins](writing-plugins.md) walks through a plugin from its first hook to an "
            "installable package.\n\n"
            f"- Registration hooks: {index(registration)}\n- Lifecycle hooks: {index(lifecycle)}")


def _hook_section(fn: Callable[..., Any], names: set[str]) -> str:
    doc = inspect.getdoc(fn) or "(not documented)"
    return (f"### {fn.__name__}\n\n```python\n{signature(fn)}\n```\n\n"
            + _link_hooks(_markdown(doc), names - {fn.__name__}))


def signature(fn: Callable[..., Any]) -> str:
    """`def name(arg: type, ...) -> type` as written in the source.

    hookspecs.py uses postponed annotations (some only exist under TYPE_CHECKING), so the
    annotations are kept as the source strings rather than evaluated."""
    sig = inspect.signature(fn)
    params = ", ".join(p.name if p.annotation is p.empty else f"{p.name}: {_annotation(p.annotation)}"
                       for p in sig.parameters.values())
    returns = "" if sig.return_annotation is sig.empty else f" -> {_annotation(sig.return_annotation)}"
    return f"def {fn.__name__}({params}){returns}"


def _annotation(value: Any) -> str:
    return value if isinstance(value, str) else inspect.formatannotation(value)


def _factories_type() -> str:
    return str(hookspecs.Factories).replace("typing.", "").replace("collections.abc.", "")


def _link_hooks(text: str, names: set[str]) -> str:
    """Hook names become links to their sections (mkdocs checks the anchors): a code span that is
    exactly a hook name, and a bare name in prose. Fenced code and other code spans are kept."""
    def bare(m: re.Match) -> str:
        return f"[`{m[0]}`](#{m[0]})" if m[0] in names else m[0]

    pieces = re.split(r"(```.*?```|`[^`]*`)", text, flags=re.S)  # odd pieces: code
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            pieces[i] = re.sub(r"(?<![\w#\[.])seqtune_\w+", bare, piece)
        elif piece.strip("`") in names:
            pieces[i] = f"[{piece}](#{piece.strip('`')})"
    return "".join(pieces)


# --- docstring text to Markdown --------------------------------------------------------------
# The docstrings are Markdown already (backticks, `*` lists, **bold**) except for RST simple
# tables, which a Markdown renderer would run together into one paragraph.

_BORDER = re.compile(r"^=+( +=+)+ *$")


def _markdown(text: str) -> str:
    """Docstring text with each RST simple table turned into a Markdown table."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        if _BORDER.match(lines[i]):
            end = _table_end(lines, i)
            out.extend(_table(lines[i:end + 1]))
            i = end + 1
        else:
            out.append(lines[i])
            i += 1
    return "\n".join(out)


def _table_end(lines: list[str], start: int) -> int:
    """The index of a table's closing border: the third border line from `start`."""
    borders = [j for j in range(start, len(lines)) if lines[j] == lines[start]][:3]
    if len(borders) < 3:
        raise ValueError(f"an RST table in framework/hookspecs.py lacks its borders: {lines[start]!r}")
    return borders[2]


def _table(lines: list[str]) -> list[str]:
    """An RST simple table (border, header, border, rows, border) as Markdown table lines."""
    starts = [m.start() for m in re.finditer(r"=+", lines[0])]
    header_end = lines.index(lines[0], 1)
    header = _rows(lines[1:header_end], starts)
    body = _rows(lines[header_end + 1:-1], starts)
    table = [_table_row(cells) for cells in header[:1]]
    table.append("| " + " | ".join("---" for _ in starts) + " |")
    table += [_table_row(cells) for cells in body]
    return table


def _rows(lines: list[str], starts: list[int]) -> list[list[list[str]]]:
    """Each row's cells, a cell being its lines of text.

    A line whose first column is blank continues the row above (RST's rule), its text running on
    in each cell. One exception keeps the source's meaning: where a continuation line fills two or
    more columns and each continues a cell whose text ends with ")" (a finished entry), it starts
    a second entry (two declared values of one family), which gets a line of its own."""
    rows: list[list[list[str]]] = []
    for line in lines:
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [len(line)])]
        if cells[0] or not rows:
            rows.append([[c] for c in cells])
            continue
        filled = [(lines_, c) for lines_, c in zip(rows[-1], cells) if c]
        new_entry = len(filled) > 1 and all(lines_[-1].endswith(")") for lines_, _ in filled)
        for lines_, cell in filled:
            if new_entry:
                lines_.append(cell)
            else:
                lines_[-1] = f"{lines_[-1]} {cell}".strip()
    return rows


def _table_row(cells: list[list[str]]) -> str:
    return "| " + " | ".join("<br>".join(_cell_text(line) for line in cell) for cell in cells) + " |"


def _cell_text(text: str) -> str:
    return "".join(_escape(piece) if i % 2 == 0 else f"`{piece}`"
                   for i, piece in enumerate(text.split("`")))


def _escape(prose: str) -> str:
    """Escape `|` (a cell border) and a lone `*` (`factory(positional..., *, options)`, not
    emphasis) in text outside code spans."""
    return re.sub(r"(?<![*\w])\*(?![*\w])", r"\\*", prose).replace("|", "\\|")


if __name__ == "__main__":
    sys.exit(main())
