"""Prediction jobs (one image, its expressions, where its files go) and the ``--batch`` JSONL file.

Each line of a batch file is one JSON object::

    {"image": "photos/cat.jpg", "expressions": ["the cat on the left", "the sofa"],
     "mask": "out/cat.png", "overlay": "out/cat-overlay.jpg"}

``mask`` and ``overlay`` are optional; relative paths are relative to the batch file's folder
(so a batch file and its images can be moved together); several expressions number the outputs
as :func:`ppcr.inference.outputs.numbered_paths` describes. Blank lines are skipped. Every line
is checked — JSON, keys, expressions, output names — before any model is loaded; a problem is
reported with its line number. No output may be any line's input image or another output,
under any name (symlinks and hard links included).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ppcr.data.templates import normalise_expression
from ppcr.errors import DataError, PPCRError
from ppcr.inference.outputs import check_mask_path, check_overlay_path, numbered_paths
from ppcr.output_checks import ProtectedInputs, check_distinct

KEYS = ("image", "expressions", "mask", "overlay")


@dataclass(frozen=True)
class PredictJob:
    """One image and what to ask about it. ``where`` names its origin in error messages."""

    image: Path
    expressions: tuple[str, ...]
    masks: Optional[tuple[Path, ...]]
    overlays: Optional[tuple[Path, ...]]
    where: str = ""

    def outputs(self) -> list[Path]:
        return [*(self.masks or ()), *(self.overlays or ())]


def make_job(
    image: Path,
    expressions: list[str],
    mask: Optional[Path],
    overlay: Optional[Path],
    where: str = "",
) -> PredictJob:
    """A checked job: non-empty expressions, writable and distinct output names."""
    prefix = f"{where}: " if where else ""
    try:
        if not expressions:
            raise DataError("no referring expression given", hint='e.g. ppcr predict IMAGE "the red circle"')
        for expression in expressions:
            if not isinstance(expression, str):
                raise DataError(f"an expression must be a string, got {json.dumps(expression)}")
            normalise_expression(expression)  # empty / whitespace-only → DataError
        masks = numbered_paths(mask, len(expressions)) if mask is not None else None
        overlays = numbered_paths(overlay, len(expressions)) if overlay is not None else None
        for path in masks or ():
            check_mask_path(path)
        for path in overlays or ():
            check_overlay_path(path)
        job = PredictJob(
            image=image,
            expressions=tuple(expressions),
            masks=None if masks is None else tuple(masks),
            overlays=None if overlays is None else tuple(overlays),
            where=where,
        )
        check_distinct(job.outputs())
        own_image = ProtectedInputs()
        own_image.add(image)
        own_image.check(job.outputs())
    except PPCRError as error:
        raise type(error)(prefix + error.message, hint=error.hint) from None
    return job


def check_batch_outputs(jobs: list[PredictJob]) -> None:
    """Across the whole batch: no two outputs are one file, and no output is any line's input
    image (a later line would otherwise segment the mask written over its image)."""
    check_distinct([output for job in jobs for output in job.outputs()])
    images = ProtectedInputs()
    for job in jobs:
        images.add(job.image, f"input image of {job.where}" if job.where else "input image")
    for job in jobs:
        try:
            images.check(job.outputs())
        except PPCRError as error:
            raise type(error)(f"{job.where}: {error.message}", hint=error.hint) from None


def _field(record: dict[str, Any], key: str, where: str) -> Optional[str]:
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: {key!r} must be a non-empty string path, got {json.dumps(value)}")
    return value


def _relative_to(folder: Path, value: Optional[str]) -> Optional[Path]:
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else folder / path


def read_batch_file(path: str | Path) -> list[PredictJob]:
    """Parse and check a batch JSONL file into jobs (no image is read, no model is loaded)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"batch file not found: {path}")
    if path.is_dir():
        raise DataError(f"batch file {path} is a directory")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read batch file {path}: {error}") from None
    folder = path.parent
    jobs: list[PredictJob] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object like {{\"image\": ..., \"expressions\": [...]}}")
        unknown = sorted(set(record) - set(KEYS))
        if unknown:
            raise DataError(f"{where}: unknown key {unknown[0]!r}", hint=f"valid keys: {', '.join(KEYS)}")
        image = _field(record, "image", where)
        if image is None:
            raise DataError(f"{where}: missing \"image\"")
        expressions = record.get("expressions")
        if not isinstance(expressions, list):
            raise DataError(
                f"{where}: \"expressions\" must be a list of strings, got {json.dumps(expressions)}",
                hint='e.g. "expressions": ["the red circle"]',
            )
        jobs.append(
            make_job(
                _relative_to(folder, image),
                expressions,
                _relative_to(folder, _field(record, "mask", where)),
                _relative_to(folder, _field(record, "overlay", where)),
                where,
            )
        )
    if not jobs:
        raise DataError(f"batch file {path} holds no jobs")
    check_batch_outputs(jobs)
    return jobs
