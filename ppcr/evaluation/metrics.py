"""Referring-segmentation metrics (docs/design.md, "Metrics"), pure numpy.

Per sentence: I = |pred ∧ gt|, U = |pred ∨ gt|, IoU = I / U, with IoU = 1 when U = 0 (empty
prediction on an empty target is a perfect answer; LISA's and GLaMM's convention, without their
1e-5/1e-10 smoothing in the denominator).

Over a split (all reported in PERCENT, like the paper):
- ``oIoU`` = ΣI / ΣU (LISA/GLaMM "cIoU"); if ΣU = 0 every sentence was an empty-on-empty hit,
  so it is 100;
- ``mIoU`` = mean per-sentence IoU (LISA/GLaMM "gIoU");
- ``P@t`` for t in 0.5…0.9 = share of sentences with IoU ≥ t (``>=``, as the classic RES
  evaluation code of LAVT and its descendants counts ``this_iou >= eval_seg_iou``);
- ``count`` = number of sentences. With no sentence at all every metric is ``None``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PRECISION_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)


def _as_mask(mask: Any, name: str) -> np.ndarray:
    array = np.asarray(mask)
    if array.dtype == np.bool_:
        return array
    if np.issubdtype(array.dtype, np.integer):
        return array != 0
    raise ValueError(
        f"{name} must be a boolean or integer mask, got dtype {array.dtype} (threshold logits first)"
    )


def intersection_union(pred: Any, gt: Any) -> tuple[int, int]:
    """(|pred ∧ gt|, |pred ∨ gt|) of two same-shaped binary masks."""
    pred_mask, gt_mask = _as_mask(pred, "pred"), _as_mask(gt, "gt")
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(
            f"prediction shape {pred_mask.shape} differs from ground-truth shape {gt_mask.shape}"
        )
    intersection = int(np.count_nonzero(pred_mask & gt_mask))
    union = int(np.count_nonzero(pred_mask | gt_mask))
    return intersection, union


def iou_from_counts(intersection: int, union: int) -> float:
    """Per-sentence IoU; an empty union (empty prediction, empty target) counts as 1.0."""
    if intersection < 0 or union < 0 or intersection > union:
        raise ValueError(f"invalid counts: intersection {intersection}, union {union}")
    return 1.0 if union == 0 else intersection / union


def precision_key(threshold: float) -> str:
    return f"P@{threshold:g}"


class IoUAccumulator:
    """Running oIoU / mIoU / precision@t over the sentences of a split."""

    def __init__(self, thresholds: tuple[float, ...] = PRECISION_THRESHOLDS):
        self.thresholds = tuple(thresholds)
        self.total_intersection = 0
        self.total_union = 0
        self.iou_sum = 0.0
        self.count = 0
        self.hits = [0] * len(self.thresholds)

    def add(self, pred: Any, gt: Any) -> float:
        """Score one sentence's binary masks; returns its IoU (0..1)."""
        return self.add_counts(*intersection_union(pred, gt))

    def add_counts(self, intersection: int, union: int) -> float:
        """Score one sentence from precomputed counts; returns its IoU (0..1)."""
        iou = iou_from_counts(int(intersection), int(union))
        self.total_intersection += int(intersection)
        self.total_union += int(union)
        self.iou_sum += iou
        self.count += 1
        for index, threshold in enumerate(self.thresholds):
            if iou >= threshold:
                self.hits[index] += 1
        return iou

    def merge(self, other: IoUAccumulator) -> None:
        """Add another accumulator's sentences (e.g. from another process)."""
        if other.thresholds != self.thresholds:
            raise ValueError("cannot merge accumulators with different precision thresholds")
        self.total_intersection += other.total_intersection
        self.total_union += other.total_union
        self.iou_sum += other.iou_sum
        self.count += other.count
        self.hits = [mine + theirs for mine, theirs in zip(self.hits, other.hits)]

    def result(self) -> dict[str, float | int | None]:
        """``{"oIoU", "mIoU", "P@0.5", …, "P@0.9", "count"}``, metrics in percent."""
        keys = ["oIoU", "mIoU", *(precision_key(t) for t in self.thresholds)]
        if self.count == 0:
            return {**{key: None for key in keys}, "count": 0}
        overall = 1.0 if self.total_union == 0 else self.total_intersection / self.total_union
        values = [overall, self.iou_sum / self.count, *(hit / self.count for hit in self.hits)]
        return {**{key: 100.0 * value for key, value in zip(keys, values)}, "count": self.count}


def box_iou(a_xyxy: Any, b_xyxy: Any) -> np.ndarray | float:
    """IoU of xyxy boxes, elementwise over broadcast leading dimensions (not pairwise).

    Two single boxes give a float. For all pairs pass ``a[:, None]`` and ``b[None]``. Corners are
    taken as given (x2 < x1 means zero width); boxes whose union has zero area score 0.
    """
    a = np.asarray(a_xyxy, dtype=np.float64)
    b = np.asarray(b_xyxy, dtype=np.float64)
    if a.shape[-1:] != (4,) or b.shape[-1:] != (4,):
        raise ValueError(f"boxes must end in a dimension of 4, got {a.shape} and {b.shape}")
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    intersection = width * height
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area_a + area_b - intersection
    iou = np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)
    return float(iou) if iou.ndim == 0 else iou
