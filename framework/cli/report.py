"""`seqtune report OUTPUT_DIR`: a finished or running run's summary from its files, and its plots."""
from __future__ import annotations

from pathlib import Path

import typer

from framework.cli.common import console, user_errors


@user_errors
def report(output_dir: Path = typer.Argument(..., help="The output_dir of a seqtune run."),
           plots: bool = typer.Option(False, "--plots", help="Also (re)draw OUTPUT_DIR/loss_curve.png "
                                      "(needs the plot extra: pip install 'seqtune[plot]').")) -> None:
    """Status, steps, train and eval losses, tokens/s, MFU, peak memory and the last checkpoint of a
    run, read from its metrics.jsonl, run.json and checkpoints (while it runs, too)."""
    from rich.table import Table

    from framework.report.run import history, read_run, report_rows

    run = read_run(output_dir)
    table = Table(title=f"run in {output_dir}", show_header=False)
    for name, value in report_rows(run):
        table.add_row(name, value)
    console.print(table)
    if plots:
        from framework.report.plots import loss_curve

        path = loss_curve(history(run), output_dir / "loss_curve.png", f"{output_dir.name}: loss")
        console.print(f"loss curve written to {path}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
