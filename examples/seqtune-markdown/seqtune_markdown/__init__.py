"""seqtune-markdown: a third-party seqtune plugin package, written against seqtune's public API only
(`import framework`), as any other package would be.

It registers two plugins:

* the dataset loader `markdown_dialogues`: a folder of Markdown files, one conversation each, whose
  turns are `## user`, `## assistant` and `## system` headings with the turn's text below them;
* the logger `csv`: every logged metric as a row of `metrics.csv` in the run's output_dir.
"""
from __future__ import annotations

import csv
from pathlib import Path

from framework import Rows, RunInfo, UserError, hookimpl

ROLES = ("system", "user", "assistant")


def read_dialogue(path: Path) -> tuple[list[dict], list[int]]:
    """A file's turns as {role, content} messages, and the 1-based line of each turn's heading."""
    messages, lines = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("## "):
            role = line[3:].strip().lower()
            if role not in ROLES:
                raise UserError(f"{path}:{number}: unknown turn heading '## {role}'; use "
                                + ", ".join(f"'## {r}'" for r in ROLES))
            messages.append({"role": role, "content": ""})
            lines.append(number)
        elif messages:
            messages[-1]["content"] += line + "\n"
        elif line.strip():
            raise UserError(f"{path}:{number}: text before the first '## user' heading")
    return [{**m, "content": m["content"].strip()} for m in messages], lines


def markdown_dialogues(source: str, split: str) -> Rows:
    """Every `*.md` file under the folder `source`, in name order, as one conversation (a row)."""
    folder = Path(source)
    if not folder.is_dir():
        raise UserError(f"{source}: the markdown_dialogues loader reads a folder of .md files")
    rows = Rows()
    for path in sorted(folder.rglob("*.md")):
        messages, lines = read_dialogue(path)
        # one row per file, named by the line of its first turn in later errors
        rows.add_file(str(path), [{"messages": messages}], [lines[0] if lines else 1])
    return rows


class CsvLogger:
    """Every logged metric as a CSV row (step first); a new metric name starts a new header."""

    def __init__(self, path: Path):
        self.path, self.columns = path, None

    @hookimpl
    def seqtune_train_start(self, run: RunInfo) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not run.start_step:
            self.path.unlink(missing_ok=True)

    @hookimpl
    def seqtune_log(self, step: int, metrics: dict[str, float]) -> None:
        columns = ["step", *metrics]
        with self.path.open("a", newline="") as out:
            writer = csv.writer(out)
            if columns != self.columns:
                writer.writerow(columns)
                self.columns = columns
            writer.writerow([step, *metrics.values()])


def csv_logger(output_dir: str, *, filename: str = "metrics.csv") -> CsvLogger:
    return CsvLogger(Path(output_dir) / filename)


@hookimpl
def seqtune_register_dataset_loaders():
    return {"markdown_dialogues": markdown_dialogues}


@hookimpl
def seqtune_register_loggers():
    return {"csv": csv_logger}
