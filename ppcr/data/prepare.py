"""Layout validation behind ``ppcr prepare refcoco|refcoco+|refcocog``.

The real datasets cannot be downloaded by PPCR (the original host is gone; mirrors are listed in
the README), so ``prepare`` checks what the user put in place: the refs pickle and instances.json
parse, every ref's annotation and image entry exist, every annotation a ref uses is valid (see
:mod:`ppcr.data.annotations`), and every referenced image file is on disk. Structural failures
(no root, no folder, unreadable files) raise at once; per-record problems are collected into a
:class:`LayoutReport` so the user sees all of them with measured vs published counts.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ppcr.data.annotations import annotation_problem
from ppcr.data.datasets import SplitCounts, get_dataset
from ppcr.data.refer import ReferIndex, ordered_sentences, split_matches
from ppcr.errors import DataError

FIRST_FEW = 3
_PROGRESS_CHUNK = 256


@dataclass(frozen=True)
class SplitRow:
    """Measured sizes of one split, beside the published ones (None when unpublished)."""

    split: str
    images: int
    refs: int
    sentences: int
    published: SplitCounts | None


@dataclass(frozen=True)
class LayoutProblem:
    """One kind of defect: how many records have it and the first few offenders."""

    kind: str
    count: int
    total: int
    examples: tuple[str, ...]
    message: str
    hint: str | None = None
    details: tuple[str, ...] = ()  # one line per shown offender, saying what is wrong with it


@dataclass
class LayoutReport:
    """What ``check_refer_layout`` found for one dataset."""

    dataset: str
    root: Path
    split_by: str
    images_dir: Path
    rows: list[SplitRow] = field(default_factory=list)
    problems: list[LayoutProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    images_checked: bool = False
    total_images: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line naming every problem (empty when ok)."""
        if not self.problems:
            return ""
        return f"{self.dataset}: " + "; ".join(problem.message for problem in self.problems)

    def raise_if_problems(self) -> None:
        """Raise one DataError summarising every problem, with the hints of each kind."""
        if self.ok:
            return
        hints = [p.hint for p in self.problems if p.hint]
        raise DataError(self.summary(), hint="; ".join(dict.fromkeys(hints)) or None)


def _first(values) -> tuple[str, ...]:
    return tuple(str(v) for v in list(values)[:FIRST_FEW])


def _examples_text(examples: tuple[str, ...], count: int) -> str:
    more = ", ..." if count > len(examples) else ""
    return ", ".join(examples) + more


def check_refer_layout(
    name: str,
    root: str | Path,
    images: str | Path | None = None,
    split_by: str | None = None,
    check_images: bool = True,
    progress: Callable[[int], None] | None = None,
) -> LayoutReport:
    """Validate a refer-layout dataset under ``root``; return counts and problems.

    Raises DataError for a missing root or dataset folder and for a missing or unreadable refs
    pickle or instances.json. ``progress(advance)`` is called while image files are checked; the
    advances add up to ``report.total_images``.
    """
    spec = get_dataset(name)
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"{spec.name}: data root not found: {root}",
            hint="the data root is the folder holding refcoco/, refcoco+/, refcocog/ and images/",
        )
    index = ReferIndex.load(spec.name, root, split_by)
    report = LayoutReport(
        dataset=spec.name,
        root=root,
        split_by=index.split_by,
        images_dir=spec.images_dir(root, images),
    )
    published = spec.published if index.split_by == spec.split_by else {}

    for split in index.splits:
        refs = [ref for ref in index.refs if split_matches(str(ref["split"]), split)]
        report.rows.append(
            SplitRow(
                split=split,
                images=len({ref["image_id"] for ref in refs}),
                refs=len(refs),
                sentences=sum(len(_sentences_or_empty(ref)) for ref in refs),
                published=published.get(split),
            )
        )
    unknown = sorted({str(ref["split"]) for ref in index.refs} - _covered_splits(index))
    if unknown:
        valid = ", ".join(index.splits)
        ignored = ", ".join(unknown)
        report.notes.append(f"refs with split values outside {valid} are ignored: {ignored}")

    _check_records(index, report)
    image_ids = sorted({ref["image_id"] for ref in index.refs if ref["image_id"] in index.images})
    report.total_images = len(image_ids)
    if check_images:
        _check_image_files(index, image_ids, report, progress)
    return report


def _covered_splits(index: ReferIndex) -> set[str]:
    values = {str(ref["split"]) for ref in index.refs}
    return {value for value in values if any(split_matches(value, split) for split in index.splits)}


def _sentences_or_empty(ref: dict) -> list[dict]:
    try:
        return ordered_sentences(ref)
    except DataError:
        return []


def _problem(
    kind: str, offenders: list, total: int, what: str, label: str, hint: str
) -> LayoutProblem:
    """A problem whose message reads "<count> of <total> <what> (first <label>: a, b, c, ...)"."""
    examples = _first(offenders)
    return LayoutProblem(
        kind=kind,
        count=len(offenders),
        total=total,
        examples=examples,
        message=f"{len(offenders)} of {total} {what} (first{' ' + label if label else ''}: "
        f"{_examples_text(examples, len(offenders))})",
        hint=hint,
    )


def _check_records(index: ReferIndex, report: LayoutReport) -> None:
    """Every ref must resolve to a valid annotation and an image of instances.json, with sentences."""
    missing_anns, missing_images, mismatched, bad_sentences, empty = [], [], [], [], []
    invalid: dict[int, str] = {}  # ann_id -> "ann <id> (ref <id>): <reason>", each annotation once
    checked: set[int] = set()
    for ref in index.refs:
        ann = index.anns.get(ref["ann_id"])
        image = index.images.get(ref["image_id"])
        if ann is None:
            missing_anns.append(ref["ann_id"])
        elif ann.get("image_id", ref["image_id"]) != ref["image_id"]:
            mismatched.append(ref["ref_id"])
        elif image is not None and ref["ann_id"] not in checked:
            checked.add(ref["ann_id"])
            problem = annotation_problem(ann, image)
            if problem:
                invalid[ref["ann_id"]] = f"ann {ref['ann_id']} (ref {ref['ref_id']}): {problem}"
        if image is None:
            missing_images.append(ref["image_id"])
        try:
            if not ordered_sentences(ref, index.refs_path):
                empty.append(ref["ref_id"])
        except DataError:
            bad_sentences.append(ref["ref_id"])

    total = len(index.refs)
    instances = index.instances_path.name
    mismatch_hint = (
        "the refs pickle and instances.json do not belong together; re-extract the dataset zip"
    )
    checks = [
        ("missing_annotations", missing_anns, "ann_id",
         f"refs point at annotations missing from {instances}"),
        ("missing_image_entries", missing_images, "image_id",
         f"refs point at image ids missing from {instances}"),
        ("annotation_image_mismatch", mismatched, "ref_id",
         "refs name an image other than their annotation's"),
    ]
    for kind, offenders, label, what in checks:
        if offenders:
            report.problems.append(_problem(kind, offenders, total, what, label, mismatch_hint))
    if invalid:
        problem = _problem(
            "invalid_annotations", list(invalid), len(checked), "annotations the refs use are invalid",
            "ann_id", f"fix or remove them in {index.instances_path}, or re-extract the dataset zip",
        )
        details = tuple(list(invalid.values())[: len(problem.examples)])
        report.problems.append(dataclasses.replace(problem, details=details))
    if bad_sentences:
        what = "refs have sentences that do not match their sent_ids"
        hint = "re-extract the dataset zip"
        problem = _problem("malformed_sentences", bad_sentences, total, what, "ref_id", hint)
        report.problems.append(problem)
    if empty:
        first = _examples_text(_first(empty), len(empty))
        report.notes.append(f"{len(empty)} refs have no sentences (first ref_id: {first})")


def _check_image_files(
    index: ReferIndex,
    image_ids: list[int],
    report: LayoutReport,
    progress: Callable[[int], None] | None,
) -> None:
    """List the images folder once and look every referenced file up in that listing."""
    images_dir = report.images_dir
    report.images_checked = True
    hint = (
        f"pass --images DIR pointing at the COCO train2014 images, or place them under {images_dir}"
    )
    present: set[str] | None
    try:
        with os.scandir(images_dir) as entries:
            present = {entry.name for entry in entries if not entry.is_dir()}
    except (FileNotFoundError, NotADirectoryError):
        present = None
    missing: list[str] = []
    pending = 0
    for image_id in image_ids:
        file_name = str(index.images[image_id]["file_name"])
        if present is None:
            missing.append(file_name)
        elif "/" in file_name or os.sep in file_name:
            if not (images_dir / file_name).is_file():
                missing.append(file_name)
        elif file_name not in present:
            missing.append(file_name)
        pending += 1
        if progress is not None and pending == _PROGRESS_CHUNK:
            progress(pending)
            pending = 0
    if progress is not None and pending:
        progress(pending)
    if missing:
        where = f"under {images_dir}" if present is not None else f"({images_dir} does not exist)"
        what = f"images missing {where}"
        report.problems.append(_problem("missing_images", missing, len(image_ids), what, "", hint))
