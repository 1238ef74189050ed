"""Partition the shared image pool into each dataset's splits.

Images, not objects, are partitioned (like refcoco unc and refcocog umd), so no image is in two
splits of one dataset. ``shapes`` and ``shapes+`` share one partition (as RefCOCO and RefCOCO+
share theirs); ``shapesg`` gets its own. testA refers only to round targets and testB only to
angular ones, mirroring RefCOCO's people / non-people test splits.
"""

from __future__ import annotations

import numpy as np

from ppcr.errors import DataError

# Share of the images per split; train takes what the others leave.
SPLIT_FRACTIONS: dict[str, float] = {"val": 0.08, "testA": 0.08, "testB": 0.08, "test": 0.12}
TARGET_FAMILY: dict[str, str] = {"testA": "round", "testB": "angular"}


def assign_splits(image_ids: list[int], splits: tuple[str, ...], rng: np.random.Generator) -> dict[int, str]:
    """Split name per image id; every split gets at least one image."""
    held_out = [s for s in splits if s != "train"]
    counts = {s: max(1, round(SPLIT_FRACTIONS[s] * len(image_ids))) for s in held_out}
    if sum(counts.values()) >= len(image_ids):
        raise DataError(f"{len(image_ids)} images are too few to fill the splits {', '.join(splits)}")
    order = [image_ids[i] for i in rng.permutation(len(image_ids))]
    assignment: dict[int, str] = {}
    start = 0
    for split in held_out:
        for image_id in order[start : start + counts[split]]:
            assignment[image_id] = split
        start += counts[split]
    for image_id in order[start:]:
        assignment[image_id] = "train"
    return assignment


def target_allowed(split: str, family: str) -> bool:
    """Whether an object of ``family`` may be a ref target in ``split``."""
    return TARGET_FAMILY.get(split, family) == family
