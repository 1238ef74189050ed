"""Where an evaluation writes its files and what they contain (no torch here).

One split's results live in ``<out>/<dataset>_<split>/``:

- ``metrics.json`` — the split's oIoU, mIoU, P@0.5…0.9 (percent) and ``count``, plus provenance
  (dataset, split, box_source, model, variant knobs, mode, timing);
- ``per_sentence.csv`` — one row per sentence in the reader's order (see ``CSV_COLUMNS``);
- ``vis/`` — the Fig. 6 panels of the first N sentences when asked for.

``ppcr tables`` reads these files back, so the names and keys are defined once, here.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ppcr.errors import DataError
from ppcr.io import atomic_save_json, atomic_write_text
from ppcr.output_checks import check_folder_spares_inputs, check_writable_folder

METRICS_FILE = "metrics.json"
PER_SENTENCE_FILE = "per_sentence.csv"
VIS_DIR = "vis"
CSV_COLUMNS = (
    "ref_id",
    "sent_id",
    "image_id",
    "ann_id",
    "iou",
    "intersection",
    "union",
    "pred_area",
    "box_x1",
    "box_y1",
    "box_x2",
    "box_y2",
    "score",
    "sentence",
)


def split_dir_name(dataset: str, split: str) -> str:
    """``refcoco+_testA``: the folder of one evaluated split."""
    return f"{dataset}_{split}"


def check_eval_destination(
    out_dir: str | Path, dataset: str, splits: Sequence[str], inputs: Iterable[str | Path]
) -> None:
    """Refuse, before any model work, an output folder the results could not be written to
    (a file, a read-only place) or one whose split folders, each replaced as a whole when its
    results are written, are or hold one of ``inputs`` (model, data root, images) under any name."""
    out_dir = Path(out_dir)
    check_writable_folder(out_dir)
    inputs = [Path(path) for path in inputs]
    for split in splits:
        check_folder_spares_inputs(out_dir / split_dir_name(dataset, split), inputs)


@dataclass(frozen=True)
class SentenceResult:
    """The score of one sentence.

    ``box_xyxy`` is the box head's prediction in pixels of the original image, corners ordered
    (as SAM receives them); ``None`` for variants without a spatial stage. ``score`` is the
    model's confidence (mean foreground probability inside the mask), ``pred_area`` the number
    of predicted foreground pixels.
    """

    ref_id: int
    sent_id: int
    image_id: int
    ann_id: int
    sentence: str
    iou: float
    intersection: int
    union: int
    pred_area: int
    box_xyxy: tuple[float, float, float, float] | None
    score: float

    def csv_row(self) -> list[Any]:
        box = self.box_xyxy if self.box_xyxy is not None else ("", "", "", "")
        return [
            self.ref_id,
            self.sent_id,
            self.image_id,
            self.ann_id,
            repr(float(self.iou)),
            self.intersection,
            self.union,
            self.pred_area,
            *(f"{value:.2f}" if value != "" else "" for value in box),
            repr(float(self.score)),
            self.sentence,
        ]


def per_sentence_csv(rows: Iterable[SentenceResult]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(row.csv_row())
    return buffer.getvalue()


def write_per_sentence(path: Path, rows: Iterable[SentenceResult]) -> Path:
    return atomic_write_text(path, per_sentence_csv(rows))


def read_per_sentence(path: str | Path) -> list[SentenceResult]:
    """Parse a ``per_sentence.csv`` back into :class:`SentenceResult` rows."""
    results = []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            for record in csv.DictReader(handle):
                box = None
                if record["box_x1"] != "":
                    box = tuple(float(record[f"box_{k}"]) for k in ("x1", "y1", "x2", "y2"))
                results.append(
                    SentenceResult(
                        ref_id=int(record["ref_id"]),
                        sent_id=int(record["sent_id"]),
                        image_id=int(record["image_id"]),
                        ann_id=int(record["ann_id"]),
                        sentence=record["sentence"],
                        iou=float(record["iou"]),
                        intersection=int(record["intersection"]),
                        union=int(record["union"]),
                        pred_area=int(record["pred_area"]),
                        box_xyxy=box,  # type: ignore[arg-type]
                        score=float(record["score"]),
                    )
                )
    except (OSError, KeyError, ValueError) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    return results


def write_metrics(path: Path, metrics: dict[str, Any]) -> Path:
    return atomic_save_json(path, metrics)


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A ``metrics.json``; a missing, unreadable or non-object file is a one-line DataError."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"metrics file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} does not hold a JSON object")
    return data


def finite_or_none(value: Any) -> float | None:
    """A metric value as a float, ``None`` when absent or not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None
