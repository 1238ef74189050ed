"""CLIP's patch grid seen from the original image.

The pointer box head (:class:`~ppcr.modeling.heads.PointerBoxHead`) lets every image token
propose a box around its own patch, the patch-CE loss names the patch that holds the target's
centre, and teacher forcing jitters ground-truth boxes within that patch. All three need the same
mapping between normalised coordinates of the original image (what boxes are measured in) and
CLIP's square input, which depends on how the image was brought to CLIP's size
(:class:`~ppcr.data.preprocess.ClipPreprocess`): padded to a centred square (LLaVA-1.5) or
resized and centre-cropped (``clip_pad_to_square: false``). Patches are numbered row-major, the
order in which CLIP flattens its patch grid into image tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ppcr.data.preprocess import resize_and_crop, square_offsets


class PatchGrid:
    """A ``grid × grid`` patch grid over a ``clip_size`` square input."""

    def __init__(self, grid: int, clip_size: int, pad_to_square: bool = True):
        if grid < 1 or clip_size < 1:
            raise ValueError(f"grid and clip_size must be positive, got {grid} and {clip_size}")
        self.grid = int(grid)
        self.clip_size = int(clip_size)
        self.pad_to_square = bool(pad_to_square)

    @property
    def patches(self) -> int:
        return self.grid * self.grid

    def frame(self, height: int, width: int) -> tuple[float, float, float, float]:
        """(scale_x, scale_y, offset_x, offset_y): CLIP-frame = original-normalised · scale + offset.

        Both frames are normalised to [0, 1]; the geometry is ``ClipPreprocess``'s own
        (:func:`~ppcr.data.preprocess.square_offsets`, :func:`~ppcr.data.preprocess.resize_and_crop`).
        """
        if self.pad_to_square:
            side = max(height, width)
            pad_x, pad_y = square_offsets(height, width)
            return width / side, height / side, pad_x / side, pad_y / side
        size = self.clip_size
        new_w, new_h, left, top = resize_and_crop(height, width, size)
        return new_w / size, new_h / size, -left / size, -top / size

    def _frames(self, sizes: Sequence[tuple[int, int]], device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and offset (B×2 each, x then y) for a batch of original (height, width) sizes."""
        values = torch.tensor([self.frame(int(h), int(w)) for h, w in sizes], dtype=dtype, device=device)
        return values[:, :2], values[:, 2:]

    def patch_index(self, points: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Row-major index of the patch holding each point (B×2 normalised x, y of the original
        image); a point outside CLIP's view (cropped away) goes to the nearest patch."""
        scale, offset = self._frames(sizes, points.device, torch.float64)
        clip_xy = points.to(torch.float64) * scale + offset
        cells = torch.floor(clip_xy * self.grid).clamp(0, self.grid - 1).to(torch.long)
        return cells[:, 1] * self.grid + cells[:, 0]

    def anchors(self, sizes: Sequence[tuple[int, int]], device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Each patch's centre in original-normalised coordinates (B×P×2) and the size of one
        patch in those units (B×2); padding patches lie outside [0, 1]."""
        scale, offset = self._frames(sizes, device, torch.float64)
        steps = (torch.arange(self.grid, dtype=torch.float64, device=device) + 0.5) / self.grid
        rows, cols = torch.meshgrid(steps, steps, indexing="ij")
        centres = torch.stack([cols.flatten(), rows.flatten()], dim=-1)  # P×2, x then y
        anchors = (centres.unsqueeze(0) - offset.unsqueeze(1)) / scale.unsqueeze(1)
        cell = (1.0 / self.grid) / scale
        return anchors.to(dtype), cell.to(dtype)

    def jitter_boxes(
        self,
        boxes: torch.Tensor,
        sizes: Sequence[tuple[int, int]],
        size_jitter: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Boxes (B×4 normalised xyxy) as a pointer that found the right patch might give them:
        the centre redrawn uniformly inside its patch (and inside the image), width and height each
        scaled by ``exp(U(-size_jitter, size_jitter))``, the result clipped to the image."""
        boxes = boxes.to(torch.float64)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        extent = boxes[:, 2:] - boxes[:, :2]
        index = self.patch_index(centre, sizes)
        anchors, cell = self.anchors(sizes, boxes.device, torch.float64)
        picked = anchors[torch.arange(boxes.shape[0], device=boxes.device), index]
        low = (picked - cell / 2).clamp(0.0, 1.0)
        high = (picked + cell / 2).clamp(0.0, 1.0)
        draws = torch.rand((boxes.shape[0], 4), generator=generator, dtype=torch.float64).to(boxes.device)
        new_centre = low + (high - low) * draws[:, :2]
        factor = torch.exp((draws[:, 2:] * 2 - 1) * size_jitter)
        half = extent * factor / 2
        jittered = torch.cat([new_centre - half, new_centre + half], dim=1).clamp(0.0, 1.0)
        return jittered.to(torch.float32)
