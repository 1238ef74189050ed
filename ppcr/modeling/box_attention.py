"""Attention supervision for the spatial query: an optional training term, not in the paper.

Why: a pretrained LLaVA already looks at the object it is asked about; a randomly initialised
tiny LLM does not. Its spatial query (the state before ``[BOX]``) spreads its last-layer attention
almost uniformly over the image (target share 0.07 against 0.05 for uniform in the shapes model),
so the box head reads a blur of the whole picture. ``loss.box_attention`` adds
``−log(attention mass on the target's patches)``, averaged over heads, which teaches the
retrieval directly (benchmarks/probe_grounding.py: target share 0.12 → 0.69, box L1 0.16 → 0.10).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# A patch counts as the target's when the mask covers more than this share of it.
COVERAGE_THRESHOLD = 0.05
_EPS = 1e-6


def patch_coverage(mask: torch.Tensor, grid: int, pad_to_square: bool) -> torch.Tensor:
    """Share of each CLIP patch (row-major, ``grid²``) that ``mask`` (H×W) covers.

    The mask goes through CLIP's geometry: centred in a square (LLaVA's pad-to-square) or its
    centre square kept (the shortest-side resize and centre crop of ``pad_to_square=False``).
    """
    mask = mask.float()
    height, width = mask.shape
    side = max(height, width) if pad_to_square else min(height, width)
    if pad_to_square:
        square = mask.new_zeros(side, side)
        top, left = (side - height) // 2, (side - width) // 2
        square[top : top + height, left : left + width] = mask
    else:
        top, left = (height - side) // 2, (width - side) // 2
        square = mask[top : top + side, left : left + side]
    return F.adaptive_avg_pool2d(square[None, None], grid).flatten()


def target_attention_nll(
    attention: torch.Tensor,
    query_positions: torch.Tensor,
    image_slots: torch.Tensor,
    coverage: torch.Tensor,
) -> torch.Tensor:
    """Mean over samples of ``−log Σ_{target patches} mean_heads(attention)``.

    ``attention``: B×heads×T×T (one layer's weights); ``query_positions``: B; ``image_slots``: B×T
    bool with the same number of image tokens per row as ``coverage`` (B×N) has columns. The mass
    is a share of all the query's attention, so the term also draws it from text onto the image.
    Samples whose target covers no patch are left out (0 when none is left).
    """
    rows = torch.arange(attention.shape[0], device=attention.device)
    weights = attention[rows, :, query_positions].float().mean(dim=1)  # B×T
    on_image = weights[image_slots].view(coverage.shape)
    target = (coverage > COVERAGE_THRESHOLD).to(on_image)
    present = target.sum(dim=1) > 0
    if not bool(present.any()):
        return on_image.sum() * 0.0
    mass = (on_image * target).sum(dim=1)[present]
    return -torch.log(mass + _EPS).mean()
