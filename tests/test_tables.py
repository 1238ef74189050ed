"""``ppcr tables``: the paper's rows with exactly the printed digits, and measured rows from run
folders placed in the right tables, columns and family."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from ppcr.config.loading import dump_recipe, load_recipe
from ppcr.evaluation.paper_tables import COLUMNS, PAPER_TABLES, POINTER_ROW
from ppcr.evaluation.tables import build_tables, tables_from_runs, to_csv, to_markdown
from tests.test_cli import _assert_one_line_error, run

EXCERPT = Path(__file__).parent / "data" / "paper_tables_excerpt.txt"
NUMBER = re.compile(r"^\d+\.\d+$")
PPCR_PRINTED = "80.10 83.55 77.60 81.10 83.69 78.33 72.50 78.52 65.55 74.34 79.56 69.33 74.92 75.70 75.94 76.10"
GT_BOX_PRINTED = "88.32 88.93 86.84 87.79 88.12 86.72 87.94 88.76 87.12 87.58 87.95 86.82 87.45 87.58 85.58 85.73"


def _printed_rows(number: int) -> list[list[str]]:
    """The number tokens of each row of Table ``number`` exactly as the paper's text prints them."""
    lines = EXCERPT.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"Table {number}:"))
    rows = []
    for line in lines[start + 4 :]:
        tokens = line.split()
        if not tokens or tokens[0] == "Absolute":
            break
        rows.append([token for token in tokens if NUMBER.match(token)])
    return rows


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _cells(row: dict[str, str]) -> list[str]:
    return [row["/".join(column)] for column in COLUMNS]


@pytest.mark.parametrize("number", [1, 2, 3])
def test_published_rows_keep_the_papers_digits(number):
    tables, notes = build_tables([])
    assert notes == []
    rows = [r for r in _csv_rows(to_csv(tables)) if r["table"] == str(number)]
    assert [r["method"] for r in rows] == [row.method for row in PAPER_TABLES[number].rows]
    assert all(r["source"] == "paper" for r in rows)
    for row, printed in zip(rows, _printed_rows(number), strict=True):
        assert [cell for cell in _cells(row) if cell] == printed, row["method"]


def _metrics(folder: Path, dataset: str, split: str, oiou: float, miou: float, box_source="predicted") -> None:
    folder.mkdir(parents=True)
    payload = {"oIoU": oiou, "mIoU": miou, "P@0.5": 1.0, "count": 10, "dataset": dataset, "split": split,
               "box_source": box_source}
    (folder / "metrics.json").write_text(json.dumps(payload))


def _recipe(run_dir: Path, name: str, *overrides: str) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(dump_recipe(load_recipe(name, overrides)))


@pytest.fixture()
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    ppcr = root / "ppcr-shapes"
    _recipe(ppcr, "shapes")
    _metrics(ppcr / "eval" / "shapes_val", "shapes", "val", 61.2345, 62.5)
    _metrics(ppcr / "eval" / "shapes+_testA", "shapes+", "testA", 55.5555, 44.4449)
    _metrics(ppcr / "eval" / "shapesg_test", "shapesg", "test", 50.0, 51.0)
    _metrics(ppcr / "eval" / "shapes_train", "shapes", "train", 99.0, 99.0)  # no column: ignored
    _metrics(ppcr / "eval-gt" / "shapes_val", "shapes", "val", 90.0, 91.0, box_source="gt")
    baseline = root / "group" / "glamm-real"
    _recipe(baseline, "paper", "spatial-prompt=none")
    _metrics(baseline / "eval" / "refcoco_testB", "refcoco", "testB", 70.0, 71.0)
    _recipe(root / "attn-expression", "shapes", "spatial-prompt=expression", "spatial-head=attn")
    _metrics(root / "attn-expression" / "eval" / "shapes_val", "shapes", "val", 1.0, 2.0)
    _recipe(root / "pointer", "shapes", "spatial-head=pointer")
    _metrics(root / "pointer" / "eval" / "shapes+_val", "shapes+", "val", 40.0, 41.0)
    (root / "broken").mkdir()
    (root / "broken" / "recipe.yaml").write_text("model:\n  spatial_prompt: bogus\n")
    return root


def _row(rows, table: int, method: str, source_part: str) -> dict[str, str]:
    matches = [r for r in rows if r["table"] == str(table) and r["method"] == method and source_part in r["source"]]
    assert len(matches) == 1, (table, method, source_part, rows)
    return matches[0]


def test_measured_rows_land_in_the_right_tables_columns_and_family(runs):
    tables, notes = tables_from_runs(runs)
    rows = _csv_rows(to_csv(tables))
    measured = [r for r in rows if r["source"] != "paper"]

    for table in (1, 2, 3):  # PPCR settings: a row in every table, as in the paper
        row = _row(measured, table, "PPCR", "measured on Shapes-Ref (ppcr-shapes)")
        values = dict(zip(["/".join(c) for c in COLUMNS], _cells(row)))
        assert values["refcoco/oIoU/val"] == "61.23" and values["refcoco/mIoU/val"] == "62.50"
        assert values["refcoco+/oIoU/testA"] == "55.56" and values["refcoco+/mIoU/testA"] == "44.44"
        assert values["refcocog/oIoU/test"] == "50.00" and values["refcocog/mIoU/test"] == "51.00"
        assert [k for k, v in values.items() if v] == [
            "refcoco/oIoU/val", "refcoco/mIoU/val", "refcoco+/oIoU/testA", "refcoco+/mIoU/testA",
            "refcocog/oIoU/test", "refcocog/mIoU/test",
        ]
    oracle = _row(measured, 3, "w/ GT Box (Oracle)", "Shapes-Ref (ppcr-shapes)")
    assert _cells(oracle)[0] == "90.00" and _cells(oracle)[3] == "91.00"
    baseline = _row(measured, 2, "w/o Spatial SP", "measured on RefCOCO family (group/glamm-real)")
    assert [c for c in _cells(baseline) if c] == ["70.00", "71.00"]
    assert _cells(baseline)[COLUMNS.index(("refcoco", "oIoU", "testB"))] == "70.00"
    # Our pointer head: a measured-only row after the paper's, in Tables 1 and 3 (not 2).
    pointer = _row(measured, 3, POINTER_ROW, "Shapes-Ref (pointer)")
    assert _cells(pointer)[COLUMNS.index(("refcoco+", "mIoU", "val"))] == "41.00"
    assert [r["method"] for r in rows if r["table"] == "3"][-1] == POINTER_ROW
    # Each measured row only where the paper has that row (or our extension row).
    assert {(r["table"], r["method"]) for r in measured} == {
        ("1", "PPCR"), ("2", "PPCR"), ("3", "PPCR"), ("3", "w/ GT Box (Oracle)"), ("2", "w/o Spatial SP"),
        ("1", POINTER_ROW), ("3", POINTER_ROW),
    }
    assert any("broken" in note and "spatial_prompt" in note for note in notes)
    assert any("attn-expression" in note and "no row" in note for note in notes)


def test_cli_markdown_has_the_papers_numbers_and_the_measured_rows(runs):
    result = run("tables", "--runs", str(runs), "--format", "markdown")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    ppcr_paper = [line for line in lines if line.startswith("| PPCR |") and "| paper |" in line]
    assert len(ppcr_paper) == 3
    assert all(" | ".join(PPCR_PRINTED.split()) in line for line in ppcr_paper)
    gt_box = next(line for line in lines if line.startswith("| w/ GT Box (Oracle) | paper |"))
    assert " | ".join(GT_BOX_PRINTED.split()) in gt_box
    assert "| NExT-Chat [51] | 7B | paper | 74.7 | 78.9 | 69.5 | – |" in result.stdout
    measured = [line for line in lines if "measured on Shapes-Ref (ppcr-shapes)" in line]
    assert len(measured) == 4  # PPCR in Tables 1-3, and its oracle evaluation in Table 3
    assert sum(line.startswith("| PPCR |") and "| 61.23 |" in line for line in measured) == 3
    assert sum(line.startswith("| w/ GT Box (Oracle) |") and "| 90.00 |" in line for line in measured) == 1
    assert "note:" in result.stderr and "broken" in result.stderr


def test_cli_rich_table_and_csv(runs):
    table = run("tables", "--runs", str(runs))
    assert table.returncode == 0, table.stderr
    for text in ("Table 1", "Table 2", "Table 3", "80.10", "76.10", "88.32", "Shapes-Ref", "61.23", "RefCOCO+"):
        assert text in table.stdout
    assert "…" not in table.stdout  # numbers are never cut, even on a narrow or piped stdout
    plain = run("tables", "--format", "csv")
    assert plain.returncode == 0, plain.stderr
    rows = _csv_rows(plain.stdout)
    assert rows and all(r["source"] == "paper" for r in rows)


def test_cli_bad_input():
    _assert_one_line_error(run("tables", "--runs", "/nonexistent/runs"), 1, "runs folder not found")
    _assert_one_line_error(run("tables", "--format", "html"), 1, "--format must be one of table, markdown, csv")


def test_markdown_renderer_escapes_and_aligns():
    text = to_markdown(build_tables([])[0])
    header = next(line for line in text.splitlines() if line.startswith("| Method | MLLM | Source |"))
    assert header.count("|") == 3 + 16 + 1
    assert "| RefCOCOg mIoU Test(U) |" in header
