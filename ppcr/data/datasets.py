"""The registry of refer-layout datasets PPCR knows: RefCOCO family and Shapes-Ref.

One table answers, for a dataset name: its folder under the data root, which ``refs(<split_by>).p``
to read, its split names, where its images live by default, and the published counts that
``ppcr prepare`` prints beside the measured ones.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from ppcr.errors import DataError


@dataclass(frozen=True)
class SplitCounts:
    """Published sizes of one split (None where the source gives none)."""

    images: int | None
    refs: int | None
    sentences: int | None


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about one dataset in the refer layout."""

    name: str
    folder: str
    split_by: str
    splits: tuple[str, ...]
    images_subdir: str
    family: str
    published: dict[str, SplitCounts] = field(default_factory=dict)
    other_split_bys: tuple[str, ...] = ()

    def refs_path(self, root: Path, split_by: str | None = None) -> Path:
        return Path(root) / self.folder / f"refs({split_by or self.split_by}).p"

    def instances_path(self, root: Path) -> Path:
        return Path(root) / self.folder / "instances.json"

    def images_dir(self, root: Path, images: str | Path | None = None) -> Path:
        return Path(images) if images is not None else Path(root) / self.images_subdir

    def check_split(self, split: str) -> str:
        if split not in self.splits:
            raise DataError(
                f"unknown split {split!r} for {self.name}; valid splits: {', '.join(self.splits)}",
                hint=_did_you_mean(split, self.splits),
            )
        return split


COCO_IMAGES = "images/mscoco/images/train2014"
SHAPES_IMAGES = "images/shapes"

# Published counts: refs and images from TFDS's refcoco description, sentences from the
# refer API run over the pickles (a published dump; its totals match lichengunc/refer's demo).
DATASETS: dict[str, DatasetSpec] = {
    "refcoco": DatasetSpec(
        name="refcoco",
        folder="refcoco",
        split_by="unc",
        other_split_bys=("google",),
        splits=("train", "val", "testA", "testB"),
        images_subdir=COCO_IMAGES,
        family="refcoco",
        published={
            "train": SplitCounts(16994, 42404, 120624),
            "val": SplitCounts(1500, 3811, 10834),
            "testA": SplitCounts(750, 1975, 5657),
            "testB": SplitCounts(750, 1810, 5095),
        },
    ),
    "refcoco+": DatasetSpec(
        name="refcoco+",
        folder="refcoco+",
        split_by="unc",
        splits=("train", "val", "testA", "testB"),
        images_subdir=COCO_IMAGES,
        family="refcoco",
        published={
            "train": SplitCounts(16992, 42278, 120191),
            "val": SplitCounts(1500, 3805, 10758),
            "testA": SplitCounts(750, 1975, 5726),
            "testB": SplitCounts(750, 1798, 4889),
        },
    ),
    "refcocog": DatasetSpec(
        name="refcocog",
        folder="refcocog",
        split_by="umd",
        other_split_bys=("google",),
        splits=("train", "val", "test"),
        images_subdir=COCO_IMAGES,
        family="refcoco",
        published={
            "train": SplitCounts(21899, 42226, 80512),
            "val": SplitCounts(1300, 2573, 4896),
            "test": SplitCounts(2600, 5023, 9602),
        },
    ),
    "shapes": DatasetSpec(
        name="shapes",
        folder="shapes",
        split_by="unc",
        splits=("train", "val", "testA", "testB"),
        images_subdir=SHAPES_IMAGES,
        family="shapes",
    ),
    "shapes+": DatasetSpec(
        name="shapes+",
        folder="shapes+",
        split_by="unc",
        splits=("train", "val", "testA", "testB"),
        images_subdir=SHAPES_IMAGES,
        family="shapes",
    ),
    "shapesg": DatasetSpec(
        name="shapesg",
        folder="shapesg",
        split_by="umd",
        splits=("train", "val", "test"),
        images_subdir=SHAPES_IMAGES,
        family="shapes",
    ),
}

# Splits a refcocog-google file may carry (no canonical test split there).
GOOGLE_SPLITS = {"refcoco": ("train", "val", "test"), "refcocog": ("train", "val")}


def _did_you_mean(value: str, choices) -> str | None:
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f"did you mean {close[0]!r}?" if close else None


def get_dataset(name: str) -> DatasetSpec:
    """Look a dataset up by name, with a did-you-mean error for unknown names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(
            f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}",
            hint=_did_you_mean(name, DATASETS),
        ) from None


def parse_split_ref(text: str) -> tuple[DatasetSpec, str]:
    """Parse ``dataset/split`` (e.g. ``refcoco+/testA``) into a spec and a checked split."""
    if "/" not in text:
        raise DataError(f"expected DATASET/SPLIT, got {text!r}", hint="for example refcoco/val")
    name, split = text.rsplit("/", 1)
    spec = get_dataset(name)
    return spec, spec.check_split(split)
