"""The training objective (paper eq. 7; docs/design.md, "Objective").

``L = λ1·BCE + λ2·Dice + λ3·L1 + λ4·CE``:

- BCE and Dice on the mask logits at the original image resolution, each averaged over pixels
  per mask and then over masks (GLaMM/LISA: ``sigmoid_ce_loss`` and ``dice_loss`` with scale
  1000, eps 1e-6);
- L1 between the predicted normalised box (the raw F_Map output, so the head learns to emit
  ordered corners) and the ground-truth normalised xyxy, averaged over coordinates and boxes;
- patch CE (not in the paper; ``spatial_head: pointer``), the cross-entropy of the pointer's
  scores over CLIP's patches against the patch holding the ground-truth box's centre;
- CE, the next-token loss over the assistant answers of both stages (token mean over all
  answer tokens of the batch; it teaches the model to emit ``[SEG]`` and ``[BOX]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F

from ppcr.config.schema import LossSpec

if TYPE_CHECKING:  # pragma: no cover
    from ppcr.modeling.outputs import PPCRPrediction

DICE_SCALE = 1000.0
DICE_EPS = 1e-6


def mask_bce(logits: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over masks of the per-pixel-mean BCE-with-logits (each mask at its own H×W)."""
    terms = [
        F.binary_cross_entropy_with_logits(lg.float(), tg.to(device=lg.device, dtype=torch.float32))
        for lg, tg in zip(logits, targets, strict=True)
    ]
    return torch.stack(terms).mean()


def dice_loss_one(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """GLaMM's dice: ``1 − (2Σ(p/s·g) + ε) / (Σp/s + Σg/s + ε)`` with s = 1000, ε = 1e-6."""
    prob = logits.float().sigmoid().flatten()
    target = target.to(device=logits.device, dtype=torch.float32).flatten()
    numerator = 2 * (prob / DICE_SCALE * target).sum()
    denominator = (prob / DICE_SCALE).sum() + (target / DICE_SCALE).sum()
    return 1 - (numerator + DICE_EPS) / (denominator + DICE_EPS)


def mask_dice(logits: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over masks of :func:`dice_loss_one`."""
    return torch.stack([dice_loss_one(lg, tg) for lg, tg in zip(logits, targets, strict=True)]).mean()


def box_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between normalised xyxy boxes."""
    return F.l1_loss(pred.float(), target.to(device=pred.device, dtype=torch.float32))


def patch_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the pointer's patch scores (B×P) against the target patch index."""
    return F.cross_entropy(logits.float(), target.to(logits.device))


def top1_accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Share of rows whose highest score is the target (a metric, not optimised)."""
    return (logits.argmax(dim=-1) == target.to(logits.device)).float().mean().detach()


def answer_ce(ce_sum: torch.Tensor, ce_count: int) -> torch.Tensor:
    """Token-mean cross-entropy from a summed loss and the number of answer tokens."""
    return ce_sum / max(int(ce_count), 1)


def weighted_total(losses: dict[str, torch.Tensor], weights: LossSpec) -> torch.Tensor:
    """``λ1·bce + λ2·dice + λ3·l1 + λ4·ce`` over the terms present in ``losses``."""
    lam = {"bce": weights.bce, "dice": weights.dice, "l1": weights.l1, "ce": weights.ce, "patch_ce": weights.patch_ce}
    total = None
    for name, value in losses.items():
        term = lam[name] * value
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no loss terms to combine")
    return total


def objective(
    prediction: "PPCRPrediction",
    gt_masks: Optional[Sequence[torch.Tensor]],
    gt_boxes: Optional[torch.Tensor],
    target_patches: Optional[torch.Tensor],
    weights: LossSpec,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The weighted loss, its unweighted terms and the logged-only metrics of one forward.

    Terms without ground truth are left out: no masks → no bce/dice; no boxes or no spatial stage
    → no l1. ``target_patches`` (the patch holding each box centre; pointer head only) give
    ``patch_ce`` and the ``patch_acc`` metric. CE over both stages' answers is always there.
    """
    terms: dict[str, torch.Tensor] = {}
    metrics: dict[str, torch.Tensor] = {}
    if gt_masks is not None:
        terms["bce"] = mask_bce(prediction.mask_logits, gt_masks)
        terms["dice"] = mask_dice(prediction.mask_logits, gt_masks)
    if prediction.boxes is not None and gt_boxes is not None:
        terms["l1"] = box_l1(prediction.boxes, gt_boxes)
    if prediction.patch_logits is not None and target_patches is not None:
        terms["patch_ce"] = patch_ce(prediction.patch_logits, target_patches)
        metrics["patch_acc"] = top1_accuracy(prediction.patch_logits, target_patches)
    terms["ce"] = answer_ce(prediction.ce_sum, prediction.ce_count)
    return weighted_total(terms, weights), terms, metrics
