"""Tables 1–3 in the paper's layout: the published rows, then the rows measured here.

Columns are the paper's 16 (``paper_tables.COLUMNS``): per dataset (RefCOCO, RefCOCO+,
RefCOCOg) oIoU over its splits, then mIoU over the same splits. Published rows are printed with
the digits the paper prints (two decimals, one for the rows the paper gives with one).

A measured row comes from one run (``ppcr.evaluation.runs``), one dataset family and one box
source. Shapes-Ref mirrors the RefCOCO family, so its datasets fill the same columns
(``shapes``→RefCOCO, ``shapes+``→RefCOCO+, ``shapesg``→RefCOCOg, same split names); the row
says which family it was measured on, since Shapes-Ref numbers are not comparable with the
paper's. The row's method is the paper row its settings reproduce (``variant_label`` of the
recipe's ``spatial_prompt``/``spatial_head`` and the evaluation's ``box_source``), and it is
added to every table that has that row (PPCR itself to all three, as in the paper).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ppcr.data.datasets import DATASETS
from ppcr.evaluation.outputs import finite_or_none
from ppcr.evaluation.paper_tables import (
    COLUMNS,
    DATASET_SPLITS,
    DATASET_TITLES,
    PAPER_TABLES,
    SPLIT_TITLES,
    Column,
    PaperRow,
    variant_label,
)
from ppcr.evaluation.runs import Run, find_runs

if TYPE_CHECKING:  # pragma: no cover
    from rich.table import Table

# Which paper column group a measured dataset fills.
COLUMN_DATASET: dict[str, str] = {
    "refcoco": "refcoco",
    "refcoco+": "refcoco+",
    "refcocog": "refcocog",
    "shapes": "refcoco",
    "shapes+": "refcoco+",
    "shapesg": "refcocog",
}
FAMILY_TITLES: dict[str, str] = {"refcoco": "RefCOCO family", "shapes": "Shapes-Ref"}
PAPER_SOURCE = "paper"
MISSING = "–"
MEASURED_DECIMALS = 2
SHAPES_NOTE = (
    "Shapes-Ref rows fill the RefCOCO / RefCOCO+ / RefCOCOg columns with shapes / shapes+ / shapesg "
    "(synthetic data: not comparable with the published numbers)."
)


@dataclass(frozen=True)
class TableRow:
    """One row: ``values`` has every column of ``COLUMNS`` (``None`` where not reported)."""

    method: str
    source: str
    values: dict[Column, Optional[float]]
    decimals: int
    mllm: Optional[str] = None
    citation: Optional[int] = None
    measured: bool = False

    def cell(self, column: Column) -> str:
        value = self.values.get(column)
        return MISSING if value is None else f"{value:.{self.decimals}f}"


@dataclass(frozen=True)
class ComparisonTable:
    number: int
    title: str
    rows: tuple[TableRow, ...]
    columns: tuple[Column, ...] = COLUMNS
    note: Optional[str] = None

    @property
    def shows_mllm(self) -> bool:
        return any(row.mllm for row in self.rows)


def column_title(column: Column, separator: str = " ") -> str:
    """``RefCOCO oIoU Val`` — how the paper's three header lines name a column."""
    dataset, metric, split = column
    return separator.join((DATASET_TITLES[dataset], metric, SPLIT_TITLES[(dataset, split)]))


def _printed_decimals(value: float) -> int:
    text = repr(float(value))
    return len(text.split(".")[1]) if "." in text and "e" not in text else 0


def paper_row(row: PaperRow) -> TableRow:
    """A published row, with as many decimals as the paper prints in that row."""
    decimals = max((_printed_decimals(v) for v in row.values.values() if v is not None), default=2)
    return TableRow(
        method=row.method,
        source=PAPER_SOURCE,
        values=dict(row.values),
        decimals=decimals,
        mllm=row.mllm,
        citation=row.citation,
    )


@dataclass(frozen=True)
class MeasuredRow:
    """A measured row before it is placed: which paper row it reproduces, and its numbers."""

    variant: Optional[str]
    run: str
    family: str
    box_source: str
    spatial_prompt: str
    spatial_head: str
    values: dict[Column, Optional[float]]

    def table_row(self) -> TableRow:
        method = self.variant or f"spatial_prompt={self.spatial_prompt}, spatial_head={self.spatial_head}"
        return TableRow(
            method=method,
            source=f"measured on {FAMILY_TITLES.get(self.family, self.family)} ({self.run})",
            values=dict(self.values),
            decimals=MEASURED_DECIMALS,
            measured=True,
        )


def measured_rows(runs: list[Run]) -> tuple[list[MeasuredRow], list[str]]:
    """One row per (run, dataset family, box source) with at least one paper column filled."""
    rows, notes = [], []
    for run in runs:
        cells: dict[tuple[str, str], dict[Column, Optional[float]]] = {}
        sources: dict[tuple[str, str, str, str], str] = {}
        for evaluation in run.evaluations:
            spec = DATASETS.get(evaluation.dataset)
            column_dataset = COLUMN_DATASET.get(evaluation.dataset)
            if spec is None or column_dataset is None:
                notes.append(f"{evaluation.path}: dataset {evaluation.dataset!r} has no column in the paper's tables")
                continue
            if evaluation.split not in DATASET_SPLITS[column_dataset]:
                continue  # e.g. a train-split evaluation: no paper column
            key = (spec.family, evaluation.box_source)
            values = cells.setdefault(key, {column: None for column in COLUMNS})
            slot = (*key, column_dataset, evaluation.split)
            if slot in sources:
                notes.append(
                    f"run {run.name}: {sources[slot]} and {evaluation.path} both measure "
                    f"{evaluation.dataset}/{evaluation.split} with {evaluation.box_source} boxes; "
                    "using the latter"
                )
            sources[slot] = str(evaluation.path)
            for metric in ("oIoU", "mIoU"):
                values[(column_dataset, metric, evaluation.split)] = finite_or_none(evaluation.metrics.get(metric))
        for (family, box_source), values in sorted(cells.items()):
            variant = variant_label(run.spatial_prompt, run.spatial_head, box_source)
            rows.append(
                MeasuredRow(variant, run.name, family, box_source, run.spatial_prompt, run.spatial_head, values)
            )
            if variant is None:
                notes.append(
                    f"run {run.name} ({run.spatial_prompt}, {run.spatial_head}, {box_source} boxes) "
                    "reproduces no row of the paper's tables; it is not shown"
                )
    return rows, notes


def build_tables(runs: Optional[list[Run]] = None) -> tuple[list[ComparisonTable], list[str]]:
    """Tables 1, 2, 3: the published rows followed by the measured rows each table has a row for."""
    measured, notes = measured_rows(runs or [])
    tables = []
    for number, paper in PAPER_TABLES.items():
        order = [row.method for row in paper.rows] + list(paper.extensions)
        mine = sorted((row for row in measured if row.variant in order), key=lambda r: (order.index(r.variant), r.run))
        rows = [paper_row(row) for row in paper.rows] + [row.table_row() for row in mine]
        note = SHAPES_NOTE if any(row.family == "shapes" for row in mine) else None
        tables.append(ComparisonTable(number, paper.title, tuple(rows), note=note))
    return tables, notes


def tables_from_runs(runs_dir: Optional[str | Path]) -> tuple[list[ComparisonTable], list[str]]:
    """:func:`build_tables` for the runs found under ``runs_dir`` (``None``: published rows only)."""
    if runs_dir is None:
        return build_tables([])
    runs, notes = find_runs(runs_dir)
    tables, more = build_tables(runs)
    return tables, notes + more


# ----------------------------------------------------------------------------- renderers


def _method_cell(row: TableRow) -> str:
    return f"{row.method} [{row.citation}]" if row.citation is not None else row.method


def to_markdown(tables: list[ComparisonTable]) -> str:
    """GitHub-flavoured markdown, one table per paper table."""
    parts = []
    for table in tables:
        header = ["Method", *(["MLLM"] if table.shows_mllm else []), "Source"]
        header += [column_title(column) for column in table.columns]
        lines = [
            f"**Table {table.number}.** {table.title}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join([":---"] * (len(header) - len(table.columns)) + ["---:"] * len(table.columns)) + "|",
        ]
        for row in table.rows:
            cells = [_method_cell(row), *([row.mllm or MISSING] if table.shows_mllm else []), row.source]
            cells += [row.cell(column) for column in table.columns]
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        if table.note:
            lines += ["", f"*{table.note}*"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def to_csv(tables: list[ComparisonTable]) -> str:
    """One CSV for all tables: ``table, method, mllm, source`` then ``dataset/metric/split`` columns.

    Cells hold the printed digits; a value the row does not report is empty.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["table", "method", "mllm", "source", *("/".join(column) for column in COLUMNS)])
    for table in tables:
        for row in table.rows:
            cells = ["" if row.values.get(column) is None else row.cell(column) for column in table.columns]
            writer.writerow([table.number, row.method, row.mllm or "", row.source, *cells])
    return buffer.getvalue()


def to_rich(table: ComparisonTable) -> "Table":
    """A rich table with the paper's three header lines (dataset / metric / split) per column."""
    from rich.table import Table

    rich_table = Table(
        title=f"Table {table.number}: {table.title}",
        title_justify="left",
        caption=table.note,
        caption_justify="left",
    )
    rich_table.add_column("Method", style="bold", overflow="fold")
    if table.shows_mllm:
        rich_table.add_column("MLLM", overflow="fold")
    rich_table.add_column("Source", overflow="fold")
    for column in table.columns:
        rich_table.add_column(column_title(column, "\n"), justify="right", no_wrap=True)
    previous_measured = False
    for row in table.rows:
        if row.measured and not previous_measured:
            rich_table.add_section()
        previous_measured = row.measured
        cells = [_method_cell(row), *([row.mllm or MISSING] if table.shows_mllm else []), row.source]
        cells += [row.cell(column) for column in table.columns]
        rich_table.add_row(*cells, style="cyan" if row.measured else None)
    return rich_table
