"""Scoring predictions against referring-segmentation ground truth, and the paper's numbers.

``metrics`` holds the numpy metric code (oIoU, mIoU, precision@t, box IoU); ``paper_tables`` the
published Tables 1–3 to print beside measured rows. Neither imports torch.
"""

from ppcr.evaluation.metrics import IoUAccumulator, box_iou, intersection_union

__all__ = ["IoUAccumulator", "box_iou", "intersection_union"]
