"""Compose one Shapes-Ref image: background, shapes in draw order, exact per-object masks.

Masks are the pixels: each shape's polygon is rasterised once with pycocotools (the same call a
reader makes on the stored polygon), painted with a colour no other pixel of the image has, and an
object's visible mask is its mask minus the masks of shapes drawn after it. No anti-aliasing, so
``mask == (image == object colour)`` holds exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from ppcr.data.shapes.geometry import place_outline, polygon_bounds, unit_outline
from ppcr.data.shapes.vocabulary import COLOURS, FAMILIES, SIZES

IMAGE_SIDE_RANGE = (96, 160)  # inclusive, per side
MIN_SIDE_DIFFERENCE = 12  # images are never (nearly) square, so box scaling is exercised
OBJECTS_PER_IMAGE = (4, 7)  # inclusive
# An occluded object keeps at least this share of its own area and this many pixels, so every
# object stays recognisable and can be referred to.
MIN_VISIBLE_FRACTION = 0.5
MIN_VISIBLE_PIXELS = 30
NEAR_PLACEMENT_PROBABILITY = 0.4  # put the shape close to an earlier one, to create overlaps
PLACEMENT_ATTEMPTS = 40
SHADE_JITTER = 14  # per-channel offset around a colour's base, unique per object in an image
BACKGROUND_RANGE = (196, 240)  # every background channel stays >= 180 after texture
TWIN_PROBABILITY = 0.5  # add an object with the same colour and shape as another one


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    colour: str
    size: str


@dataclass
class DrawnObject:
    """An object as drawn: its polygon, colour, and the part of it still visible."""

    spec: ObjectSpec
    polygon: list[float]
    rgb: tuple[int, int, int]
    full_mask: np.ndarray  # bool H x W
    visible_mask: np.ndarray  # bool H x W

    @property
    def occluded(self) -> bool:
        return not np.array_equal(self.full_mask, self.visible_mask)

    def visible_bbox(self) -> tuple[float, float, float, float]:
        """Tight [x, y, w, h] box of the visible mask (pixel-inclusive, like pycocotools)."""
        rows = np.flatnonzero(self.visible_mask.any(axis=1))
        cols = np.flatnonzero(self.visible_mask.any(axis=0))
        return (
            float(cols[0]),
            float(rows[0]),
            float(cols[-1] - cols[0] + 1),
            float(rows[-1] - rows[0] + 1),
        )


@dataclass
class DrawnImage:
    pixels: np.ndarray  # uint8 H x W x 3
    objects: list[DrawnObject]

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def rasterise(polygon: list[float], height: int, width: int) -> np.ndarray:
    """Boolean mask of a flat polygon, exactly as a refer reader decodes it."""
    rles = mask_utils.frPyObjects([polygon], height, width)
    return mask_utils.decode(rles)[:, :, 0].astype(bool)


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    lo, hi = IMAGE_SIDE_RANGE
    while True:
        width, height = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        if abs(width - height) >= MIN_SIDE_DIFFERENCE:
            return width, height


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    base = rng.integers(*BACKGROUND_RANGE) + rng.integers(-6, 7, size=3)
    pixels = np.broadcast_to(base, (height, width, 3)).astype(np.int16)
    texture = rng.integers(3)
    if texture == 1:  # light noise
        pixels = pixels + rng.integers(-6, 7, size=(height, width, 1))
    elif texture == 2:  # soft gradient, horizontal or vertical
        ramp = np.linspace(-10, 10, width if rng.integers(2) else height)
        ramp = ramp[None, :, None] if ramp.shape[0] == width else ramp[:, None, None]
        pixels = pixels + np.rint(ramp).astype(np.int16)
    return np.clip(pixels, 180, 255).astype(np.uint8)


def _random_spec(rng: np.random.Generator) -> ObjectSpec:
    family = list(FAMILIES)[rng.integers(len(FAMILIES))]
    shapes = FAMILIES[family]
    return ObjectSpec(
        shape=shapes[rng.integers(len(shapes))],
        colour=list(COLOURS)[rng.integers(len(COLOURS))],
        size=list(SIZES)[rng.integers(len(SIZES))],
    )


def _object_specs(rng: np.random.Generator) -> list[ObjectSpec]:
    """Random specs with a same-colour pair, a same-shape pair and often a colour+shape twin."""
    count = int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
    specs = [_random_spec(rng) for _ in range(count)]
    specs[1] = ObjectSpec(specs[1].shape, specs[0].colour, specs[1].size)
    specs[3] = ObjectSpec(specs[2].shape, specs[3].colour, specs[3].size)
    if count > 4 and rng.random() < TWIN_PROBABILITY:
        specs[4] = ObjectSpec(specs[0].shape, specs[0].colour, specs[4].size)
    order = rng.permutation(count)
    return [specs[i] for i in order]


def _has_distractors(specs: list[ObjectSpec]) -> bool:
    colours = [s.colour for s in specs]
    shapes = [s.shape for s in specs]
    return len(set(colours)) < len(colours) and len(set(shapes)) < len(shapes)


def _unique_rgb(rng: np.random.Generator, colour: str, taken: set) -> tuple[int, int, int]:
    base = np.array(COLOURS[colour])
    while True:
        rgb = tuple(int(v) for v in np.clip(base + rng.integers(-SHADE_JITTER, SHADE_JITTER + 1, 3), 0, 255))
        if rgb not in taken:
            taken.add(rgb)
            return rgb


def _try_place(
    rng: np.random.Generator, spec: ObjectSpec, placed: list[DrawnObject], height: int, width: int
) -> tuple[list[float], np.ndarray] | None:
    lo, hi = SIZES[spec.size]
    half_extent = rng.uniform(lo, hi) * min(width, height)
    for _ in range(PLACEMENT_ATTEMPTS):
        outline = unit_outline(spec.shape, half_extent, rng)
        span = outline.max(axis=0) - outline.min(axis=0)
        if placed and rng.random() < NEAR_PLACEMENT_PROBABILITY:
            anchor = placed[rng.integers(len(placed))]
            x0, y0, x1, y1 = polygon_bounds(anchor.polygon)
            angle = rng.uniform(0, 2 * np.pi)
            reach = 0.5 * (max(x1 - x0, y1 - y0) + span.max()) * rng.uniform(0.6, 1.0)
            cx = (x0 + x1) / 2 + reach * np.cos(angle)
            cy = (y0 + y1) / 2 + reach * np.sin(angle)
        else:
            cx = rng.uniform(0, width)
            cy = rng.uniform(0, height)
        polygon = place_outline(outline, cx, cy)
        x0, y0, x1, y1 = polygon_bounds(polygon)
        if x0 < 1 or y0 < 1 or x1 > width - 2 or y1 > height - 2:
            continue
        mask = rasterise(polygon, height, width)
        if all(_still_visible(obj, mask) for obj in placed):
            return polygon, mask
    return None


def _still_visible(obj: DrawnObject, new_mask: np.ndarray) -> bool:
    remaining = int(np.count_nonzero(obj.visible_mask & ~new_mask))
    full = int(np.count_nonzero(obj.full_mask))
    return remaining >= MIN_VISIBLE_PIXELS and remaining >= MIN_VISIBLE_FRACTION * full


def draw_image(rng: np.random.Generator) -> DrawnImage:
    """Draw one image: objects in draw order, each fully inside the frame and well visible."""
    while True:
        width, height = _image_size(rng)
        placed: list[DrawnObject] = []
        taken_rgb: set = set()
        for spec in _object_specs(rng):
            found = _try_place(rng, spec, placed, height, width)
            if found is None:
                continue
            polygon, mask = found
            for obj in placed:
                obj.visible_mask &= ~mask
            rgb = _unique_rgb(rng, spec.colour, taken_rgb)
            placed.append(DrawnObject(spec, polygon, rgb, mask, mask.copy()))
        if len(placed) >= OBJECTS_PER_IMAGE[0] and _has_distractors([o.spec for o in placed]):
            break
    pixels = _background(rng, height, width)
    for obj in placed:
        pixels[obj.full_mask] = obj.rgb
    return DrawnImage(pixels=pixels, objects=placed)
