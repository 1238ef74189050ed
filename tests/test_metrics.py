"""Metrics on hand-computed cases, including empty targets and empty predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ppcr.evaluation.metrics import IoUAccumulator, box_iou, intersection_union, iou_from_counts


def _mask(shape, *boxes):
    mask = np.zeros(shape, dtype=bool)
    for y0, y1, x0, x1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask


def test_intersection_union_hand_computed():
    pred = _mask((10, 10), (0, 4, 0, 5))  # 20 px
    gt = _mask((10, 10), (2, 6, 0, 5))  # 20 px, overlap rows 2-3 → 10 px
    assert intersection_union(pred, gt) == (10, 30)
    assert intersection_union(pred.astype(np.uint8), gt.astype(np.int64)) == (10, 30)


def test_intersection_union_rejects_mismatch_and_logits():
    with pytest.raises(ValueError, match="shape"):
        intersection_union(np.zeros((4, 5), bool), np.zeros((5, 4), bool))
    with pytest.raises(ValueError, match="threshold"):
        intersection_union(np.zeros((4, 4), np.float32), np.zeros((4, 4), bool))


def test_accumulator_hand_computed_split():
    acc = IoUAccumulator()
    shape = (10, 10)
    # 1: perfect hit, I=U=20 → IoU 1
    assert acc.add(_mask(shape, (0, 2, 0, 10)), _mask(shape, (0, 2, 0, 10))) == 1.0
    # 2: I=10, U=30 → 1/3
    assert acc.add(_mask(shape, (0, 4, 0, 5)), _mask(shape, (2, 6, 0, 5))) == pytest.approx(1 / 3)
    # 3: empty prediction, non-empty target: I=0, U=25 → 0
    assert acc.add(np.zeros(shape, bool), _mask(shape, (0, 5, 0, 5))) == 0.0
    # 4: empty prediction on empty target: I=U=0 → counts as 1
    assert acc.add(np.zeros(shape, bool), np.zeros(shape, bool)) == 1.0
    # 5: prediction on empty target: I=0, U=8 → 0
    assert acc.add(_mask(shape, (0, 2, 0, 4)), np.zeros(shape, bool)) == 0.0
    # 6: counts given directly, IoU exactly 0.7
    assert acc.add_counts(7, 10) == pytest.approx(0.7)
    result = acc.result()
    assert result["count"] == 6
    assert result["oIoU"] == pytest.approx(100 * (20 + 10 + 0 + 0 + 0 + 7) / (20 + 30 + 25 + 0 + 8 + 10))
    assert result["mIoU"] == pytest.approx(100 * (1 + 1 / 3 + 0 + 1 + 0 + 0.7) / 6)
    # IoUs: 1, .333, 0, 1, 0, .7 → ≥0.5: 3; ≥0.6: 3; ≥0.7: 3 (0.7 counts, >=); ≥0.8: 2; ≥0.9: 2
    assert result["P@0.5"] == pytest.approx(50.0)
    assert result["P@0.6"] == pytest.approx(50.0)
    assert result["P@0.7"] == pytest.approx(50.0)
    assert result["P@0.8"] == pytest.approx(100 * 2 / 6)
    assert result["P@0.9"] == pytest.approx(100 * 2 / 6)
    assert list(result) == ["oIoU", "mIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9", "count"]
    json.dumps(result, allow_nan=False)


def test_oiou_weights_by_area_and_miou_by_sentence():
    acc = IoUAccumulator()
    acc.add_counts(90, 100)  # big object, IoU 0.9
    acc.add_counts(1, 10)  # small object, IoU 0.1
    result = acc.result()
    assert result["oIoU"] == pytest.approx(100 * 91 / 110)
    assert result["mIoU"] == pytest.approx(50.0)


def test_all_empty_and_no_samples():
    acc = IoUAccumulator()
    acc.add(np.zeros((3, 3), bool), np.zeros((3, 3), bool))
    result = acc.result()
    assert result["oIoU"] == 100.0 and result["mIoU"] == 100.0 and result["P@0.9"] == 100.0
    empty = IoUAccumulator().result()
    assert empty["count"] == 0 and empty["oIoU"] is None and empty["mIoU"] is None and empty["P@0.5"] is None


def test_add_shape_mismatch_raises_and_does_not_count():
    acc = IoUAccumulator()
    with pytest.raises(ValueError):
        acc.add(np.zeros((2, 3), bool), np.zeros((3, 2), bool))
    assert acc.result()["count"] == 0


def test_merge_equals_single_pass():
    rng = np.random.default_rng(0)
    masks = [(rng.random((6, 7)) > 0.5, rng.random((6, 7)) > 0.6) for _ in range(9)]
    whole, first, second = IoUAccumulator(), IoUAccumulator(), IoUAccumulator()
    for index, (pred, gt) in enumerate(masks):
        whole.add(pred, gt)
        (first if index < 4 else second).add(pred, gt)
    first.merge(second)
    assert first.result() == pytest.approx(whole.result())


def test_iou_from_counts_rejects_impossible_counts():
    with pytest.raises(ValueError):
        iou_from_counts(5, 3)


def test_box_iou():
    assert box_iou([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(25 / 175)
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == pytest.approx(1.0)
    assert box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert box_iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching edges
    assert box_iou([3, 3, 3, 3], [3, 3, 3, 3]) == 0.0  # degenerate: zero union
    batch = box_iou(np.array([[0, 0, 2, 2], [0, 0, 4, 4]]), np.array([[1, 1, 3, 3], [0, 0, 2, 2]]))
    assert batch.shape == (2,)
    assert batch == pytest.approx([1 / 7, 4 / 16])
    pairwise = box_iou(np.array([[0, 0, 2, 2], [0, 0, 4, 4]])[:, None], np.array([[0, 0, 2, 2]])[None])
    assert pairwise.shape == (2, 1) and pairwise[:, 0] == pytest.approx([1.0, 0.25])
    with pytest.raises(ValueError):
        box_iou([0, 0, 1], [0, 0, 1, 1])
