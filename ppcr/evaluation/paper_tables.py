"""The paper's published Tables 1–3 as data, to print beside measured rows.

Numbers are copied exactly as printed in the paper (``tests/test_paper_tables.py`` re-reads them
from the paper's text and compares). Column layout, from the paper's three header lines: for each
dataset (RefCOCO, RefCOCO+, RefCOCOg) first oIoU over its splits, then mIoU over the same splits —
RefCOCO/RefCOCO+ val, testA, testB; RefCOCOg (UMD split) val(U), test(U) — 16 columns in all.

Table 1 rows with 8 numbers instead of 16 (CRIS, CARIS, ASDA, NExT-Chat, GSVA, SAM4MLLMs-PQPP)
report oIoU only: their 8 numbers are the oIoU of the 8 splits in the order above, and their
mIoU columns are ``None``. (Cross-checked with those methods' own papers: e.g. GSVA's
77.2/78.9/73.5, 65.9/69.6/59.8, 72.7/73.3 are its cIoU = oIoU figures.)
"""

from __future__ import annotations

from dataclasses import dataclass

Column = tuple[str, str, str]  # (dataset, metric, split): names as in ppcr.data.datasets / metrics

DATASET_SPLITS: dict[str, tuple[str, ...]] = {
    "refcoco": ("val", "testA", "testB"),
    "refcoco+": ("val", "testA", "testB"),
    "refcocog": ("val", "test"),
}
METRICS: tuple[str, ...] = ("oIoU", "mIoU")
COLUMNS: tuple[Column, ...] = tuple(
    (dataset, metric, split)
    for dataset, splits in DATASET_SPLITS.items()
    for metric in METRICS
    for split in splits
)
OIOU_COLUMNS: tuple[Column, ...] = tuple(column for column in COLUMNS if column[1] == "oIoU")

# How the paper heads the columns.
DATASET_TITLES = {"refcoco": "RefCOCO", "refcoco+": "RefCOCO+", "refcocog": "RefCOCOg"}
SPLIT_TITLES = {
    ("refcoco", "val"): "Val", ("refcoco", "testA"): "TestA", ("refcoco", "testB"): "TestB",
    ("refcoco+", "val"): "Val", ("refcoco+", "testA"): "TestA", ("refcoco+", "testB"): "TestB",
    ("refcocog", "val"): "Val(U)", ("refcocog", "test"): "Test(U)",
}


@dataclass(frozen=True)
class PaperRow:
    """One published row: ``values`` has every column of ``COLUMNS``, ``None`` where not reported."""

    method: str
    mllm: str | None
    values: dict[Column, float | None]
    citation: int | None = None

    def value(self, dataset: str, metric: str, split: str) -> float | None:
        return self.values[(dataset, metric, split)]


# Our extension, not in the paper (docs/design.md, "Variants"): measured rows only, never a
# published number. It extends the Table 3 family of box heads and is what the embedded default
# model uses, so Table 1 lists it beside PPCR too.
POINTER_ROW = "PPCR w/ Pointer Box Prediction (ours)"


@dataclass(frozen=True)
class PaperTable:
    number: int
    title: str
    rows: tuple[PaperRow, ...]
    # Labels of measured-only rows that follow the paper's rows (variants that are not in the paper).
    extensions: tuple[str, ...] = ()

    def row(self, method: str) -> PaperRow:
        for row in self.rows:
            if row.method == method:
                return row
        raise KeyError(f"Table {self.number} has no row {method!r}")


def _row(method: str, mllm: str | None, numbers: str, citation: int | None = None) -> PaperRow:
    """A row from its numbers as printed: 16 → all columns, 8 → the oIoU columns only."""
    parsed = [float(token) for token in numbers.split()]
    if len(parsed) == len(COLUMNS):
        values: dict[Column, float | None] = dict(zip(COLUMNS, parsed))
    elif len(parsed) == len(OIOU_COLUMNS):
        values = {column: None for column in COLUMNS}
        values.update(zip(OIOU_COLUMNS, parsed))
    else:
        raise ValueError(f"{method}: expected 16 or 8 numbers, got {len(parsed)}")
    return PaperRow(method, mllm, values, citation)


_GLAMM = "79.50 81.92 76.90 80.76 82.78 78.36 72.10 76.60 64.60 73.76 78.05 68.38 73.66 74.70 75.11 75.66"
_PPCR = "80.10 83.55 77.60 81.10 83.69 78.33 72.50 78.52 65.55 74.34 79.56 69.33 74.92 75.70 75.94 76.10"

TABLE_1 = PaperTable(
    1,
    "Comparison of referring image segmentation methods on RefCOCO, RefCOCO+, and RefCOCOg.",
    (
        _row("CRIS", None, "70.47 73.18 66.10 62.27 68.08 53.68 59.69 60.01", 39),
        _row("LAVT", None, "72.73 75.82 68.79 74.76 76.89 70.94 62.14 68.38 55.10 65.81 70.97 59.23 61.23 62.09 63.34 63.63", 47),
        _row("CoupAlign", None, "74.70 77.76 70.58 75.49 77.15 63.98 62.92 68.34 56.69 66.17 71.56 60.23 62.84 62.22 63.76 64.32", 54),
        _row("CARIS", None, "76.63 79.40 73.52 68.03 73.70 60.41 67.95 69.75", 23),
        _row("ASDA", None, "75.06 77.14 71.36 66.84 71.13 57.83 65.73 66.45", 50),
        _row("CMIRNet", None, "78.24 80.44 75.22 78.98 80.73 76.56 69.82 75.33 62.07 72.50 77.00 66.86 70.36 72.09 72.60 73.18", 46),
        _row("LISA", "LLaVA-7B", "67.24 70.37 63.18 67.84 70.46 63.96 53.95 59.43 47.16 53.28 59.63 46.45 60.91 61.78 61.08 61.63", 17),
        _row("NExT-Chat", "7B", "74.7 78.9 69.5 65.1 71.9 56.7 67.0 67.0", 51),
        _row("GSVA", "LLaVA-7B", "77.2 78.9 73.5 65.9 69.6 59.8 72.7 73.3", 41),
        _row("SAM4MLLMs-PQPP", "Qwen-VL-7B", "77.1 80.9 72.5 71.5 76.8 64.7 74.5 75.2", 2),
        _row("SegLLM", "LLaVA-7B", "79.32 81.69 76.58 79.55 82.70 78.12 70.78 73.41 62.11 73.70 77.22 67.43 72.30 73.24 74.19 74.43", 38),
        _row("GLaMM", "LLaVA-7B", _GLAMM, 31),
        _row("PPCR", "LLaVA-7B", _PPCR),
    ),
    extensions=(POINTER_ROW,),
)

TABLE_2 = PaperTable(
    2,
    "Ablation study on different reasoning mechanisms on RefCOCO, RefCOCO+, and RefCOCOg.",
    (
        _row("w/o Spatial SP", None, _GLAMM),
        _row("w/ Spatial SP (RE)", None, "80.22 82.76 76.66 80.99 82.98 77.96 70.93 78.04 64.25 73.35 78.81 67.45 74.30 75.08 75.17 75.73"),
        _row("w/ Spatial SP (RE + P_txt^seg)", None, "79.80 82.32 77.08 80.54 82.59 78.34 72.15 77.50 66.08 73.72 78.44 69.15 74.63 75.10 75.30 75.74"),
        _row("PPCR", None, _PPCR),
    ),
)

TABLE_3 = PaperTable(
    3,
    "Ablation study on Spatial Grounding on RefCOCO, RefCOCO+, and RefCOCOg.",
    (
        _row("w/ Attn-based Box Prediction", None, "80.11 82.31 76.81 81.09 82.98 77.92 71.87 76.34 65.20 73.93 78.33 68.44 75.37 75.03 75.97 75.90"),
        _row("w/ GT Box (Oracle)", None, "88.32 88.93 86.84 87.79 88.12 86.72 87.94 88.76 87.12 87.58 87.95 86.82 87.45 87.58 85.58 85.73"),
        _row("PPCR", None, _PPCR),
    ),
    extensions=(POINTER_ROW,),
)

PAPER_TABLES: dict[int, PaperTable] = {1: TABLE_1, 2: TABLE_2, 3: TABLE_3}

# The PPCR settings (ppcr.config.schema knobs) that each ablation row describes (docs/design.md, "Variants").
_PPCR_SETTINGS = {"spatial_prompt": "semantic", "spatial_head": "mlp", "box_source": "predicted"}
VARIANT_SETTINGS: dict[str, dict[str, str]] = {
    "w/o Spatial SP": {**_PPCR_SETTINGS, "spatial_prompt": "none"},
    "w/ Spatial SP (RE)": {**_PPCR_SETTINGS, "spatial_prompt": "expression"},
    "w/ Spatial SP (RE + P_txt^seg)": {**_PPCR_SETTINGS, "spatial_prompt": "expression+semantic"},
    "PPCR": dict(_PPCR_SETTINGS),
    "w/ Attn-based Box Prediction": {**_PPCR_SETTINGS, "spatial_head": "attn"},
    "w/ GT Box (Oracle)": {**_PPCR_SETTINGS, "box_source": "gt"},
    POINTER_ROW: {**_PPCR_SETTINGS, "spatial_head": "pointer"},
}


def variant_label(
    spatial_prompt: str, spatial_head: str = "mlp", box_source: str = "predicted"
) -> str | None:
    """The ablation row a run with these settings reproduces (or :data:`POINTER_ROW`, our
    extension), or ``None`` if there is none.

    Knobs that cannot matter are ignored: with ``box_source=gt`` the box comes from the ground
    truth whatever the spatial stage does (the oracle row); with ``spatial_prompt=none`` there is
    no spatial stage, so no box head.
    """
    if box_source == "gt":
        return "w/ GT Box (Oracle)"
    if spatial_prompt == "none":
        return "w/o Spatial SP"
    wanted = {"spatial_prompt": spatial_prompt, "spatial_head": spatial_head, "box_source": box_source}
    for label, settings in VARIANT_SETTINGS.items():
        if settings == wanted:
            return label
    return None
