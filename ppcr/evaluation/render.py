"""The qualitative panel of the paper's Fig. 6, for one sentence.

Four tiles side by side, as the figure shows them from left to right: the ground-truth mask
(GT), the predicted mask (PPCR), the ground-truth box (Spatial SP GT) and the predicted box
(Spatial SP). Ground truth is drawn in green, predictions in red (``ppcr.images`` colours). A
title row names the tiles; a caption row gives the expression and the sentence's IoU. Small
images (Shapes-Ref) are enlarged by an integer factor (nearest neighbour) so the text fits;
very big ones are scaled down to ``MAX_TILE_SIDE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ppcr.images import GT_COLOR, PRED_COLOR, ImageSource, load_image, overlay
from ppcr.io import atomic_path

TILE_TITLES = ("GT", "PPCR", "Spatial SP GT", "Spatial SP")
MIN_TILE_WIDTH = 240
MAX_TILE_SIDE = 1024  # bigger images are shown scaled down (COCO's 640-pixel images are not)
GAP = 4
TEXT_ROW = 18
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


@dataclass
class PanelInputs:
    """What one panel shows; boxes are pixel xyxy in the image's frame, masks bool H×W."""

    image: ImageSource
    gt_mask: np.ndarray
    pred_mask: np.ndarray
    gt_box: tuple[float, float, float, float]
    pred_box: Optional[tuple[float, float, float, float]]
    sentence: str
    iou: float


def _mask_tile(image: Image.Image, mask: np.ndarray, color: tuple[int, int, int]) -> Image.Image:
    """The mask tinted in ``color`` with a solid outline, the rest of the image faded.

    A plain tint can vanish on an object of a similar colour; fading the background and
    outlining the region keeps every mask readable.
    """
    pixels = np.asarray(image, dtype=np.float32).copy()
    region = np.asarray(mask) != 0
    tint = np.asarray(color, dtype=np.float32)
    pixels[~region] = 0.45 * pixels[~region] + 0.55 * 255.0
    pixels[region] = 0.4 * pixels[region] + 0.6 * tint
    padded = np.pad(region, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    pixels[region & ~interior] = tint
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def _fit_text(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> str:
    """``text`` shortened with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _shrunk(inputs: PanelInputs, base: Image.Image) -> tuple[PanelInputs, Image.Image]:
    """Image, masks and boxes scaled down so the longer side is at most MAX_TILE_SIDE: a panel
    is for looking at, and full-size float tiles of a 12000×9000 photo would need gigabytes."""
    scale = MAX_TILE_SIDE / max(base.size)
    if scale >= 1.0:
        return inputs, base
    size = (max(1, round(base.width * scale)), max(1, round(base.height * scale)))

    def mask(values: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(np.asarray(values) != 0).resize(size, Image.NEAREST))

    def box(values):
        return None if values is None else tuple(float(v) * scale for v in values)

    small = PanelInputs(
        image=base.resize(size, Image.BILINEAR),
        gt_mask=mask(inputs.gt_mask),
        pred_mask=mask(inputs.pred_mask),
        gt_box=box(inputs.gt_box),
        pred_box=box(inputs.pred_box),
        sentence=inputs.sentence,
        iou=inputs.iou,
    )
    return small, small.image


def render_panel(inputs: PanelInputs) -> Image.Image:
    """The four-tile Fig. 6 panel as one RGB image (tiles at most MAX_TILE_SIDE pixels long)."""
    inputs, base = _shrunk(inputs, load_image(inputs.image))
    tiles = [
        _mask_tile(base, inputs.gt_mask, GT_COLOR),
        _mask_tile(base, inputs.pred_mask, PRED_COLOR),
        overlay(base, gt_box=inputs.gt_box),
        overlay(base, box_xyxy=inputs.pred_box) if inputs.pred_box is not None else base.copy(),
    ]
    scale = max(1, -(-MIN_TILE_WIDTH // base.width))
    width, height = base.width * scale, base.height * scale
    tiles = [tile.resize((width, height), Image.NEAREST) if scale > 1 else tile for tile in tiles]

    columns = len(tiles)
    panel = Image.new(
        "RGB", (columns * width + (columns - 1) * GAP, height + 2 * TEXT_ROW), BACKGROUND
    )
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default()
    titles = list(TILE_TITLES)
    if inputs.pred_box is None:
        titles[3] = "Spatial SP (none)"
    for index, (tile, title) in enumerate(zip(tiles, titles)):
        left = index * (width + GAP)
        panel.paste(tile, (left, TEXT_ROW))
        draw.text((left + 2, 3), _fit_text(draw, title, width - 4, font), fill=TEXT, font=font)
    caption = f"IoU {100.0 * inputs.iou:.1f}  |  {inputs.sentence}"
    draw.text((2, TEXT_ROW + height + 3), _fit_text(draw, caption, panel.width - 4, font), fill=TEXT, font=font)
    return panel


def save_panel(inputs: PanelInputs, path: str | Path) -> Path:
    """Render and write the panel atomically as PNG."""
    with atomic_path(path) as tmp:
        render_panel(inputs).save(tmp, format="PNG")
    return Path(path)
