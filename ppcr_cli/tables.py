"""``ppcr tables``: the paper's Tables 1–3 with the rows measured in your runs (thin over
``ppcr.evaluation.tables``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ppcr.errors import PPCRError

FORMATS = ("table", "markdown", "csv")


def tables_command(
    runs: Annotated[
        Optional[Path],
        typer.Option(
            "--runs",
            help="A run folder, or a folder of runs (each with recipe.yaml and eval*/DATASET_SPLIT/metrics.json). "
            "Without it only the published rows are shown.",
        ),
    ] = None,
    output_format: Annotated[str, typer.Option("--format", help="table (rich), markdown or csv, on stdout.")] = "table",
) -> None:
    """Print Tables 1, 2 and 3 in the paper's layout: published rows, then your measured rows.

    Shapes-Ref runs fill the RefCOCO columns (shapes→RefCOCO, shapes+→RefCOCO+, shapesg→RefCOCOg)
    and are labelled as measured on Shapes-Ref.

    Examples:

      ppcr tables

      ppcr tables --runs runs --format markdown > results.md

      ppcr tables --runs runs/shapes-ppcr --format csv
    """
    from ppcr.evaluation.tables import tables_from_runs, to_csv, to_markdown, to_rich
    from ppcr_cli.console import err

    if output_format not in FORMATS:
        raise PPCRError(f"--format must be one of {', '.join(FORMATS)}; got {output_format!r}")
    tables, notes = tables_from_runs(runs)
    if output_format == "markdown":
        typer.echo(to_markdown(tables), nl=False)
    elif output_format == "csv":
        typer.echo(to_csv(tables), nl=False)
    else:
        from ppcr_cli.eval import print_unsqueezed

        for table in tables:
            print_unsqueezed(to_rich(table))
    for note in notes:
        err.print(f"[dim]note:[/] {note}", soft_wrap=True)
