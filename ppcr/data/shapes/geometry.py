"""Outline polygons of the Shapes-Ref shape types.

Every shape is a single simple polygon (no holes), so its COCO segmentation is one flat
``[x1, y1, x2, y2, ...]`` list and pycocotools rasterises it the same way when it is written
and when it is read back. Coordinates are rounded to two decimals *before* rasterising so the
stored numbers are exactly the ones the pixels were drawn from.
"""

from __future__ import annotations

import math

import numpy as np

from ppcr.data.shapes.vocabulary import SHAPE_TYPES

# Aspect ranges (long / short side) for the elongated shapes, far from 1 so that an ellipse is
# never mistaken for a circle nor a rectangle for a square.
ELONGATED_ASPECT = (1.7, 2.2)
DIAMOND_ASPECT = (1.5, 1.8)
STAR_INNER_RATIO = 0.45
CIRCLE_VERTICES = 36


def _regular(n: int, radius: float, phase: float) -> np.ndarray:
    angles = phase + np.arange(n) * (2 * math.pi / n)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def unit_outline(shape: str, half_extent: float, rng: np.random.Generator) -> np.ndarray:
    """Vertices (N x 2) of ``shape`` around the origin, about ``half_extent`` from it at most."""
    s = half_extent
    if shape == "circle":
        return _regular(CIRCLE_VERTICES, s, 0.0)
    if shape == "ellipse":
        aspect = rng.uniform(*ELONGATED_ASPECT)
        pts = _regular(CIRCLE_VERTICES, 1.0, 0.0) * np.array([s, s / aspect])
        return _rotate(pts, rng.uniform(0, math.pi))
    if shape == "semicircle":
        angles = np.linspace(0.0, math.pi, CIRCLE_VERTICES // 2 + 1)
        pts = np.stack([s * np.cos(angles), s * np.sin(angles)], axis=1)
        return _rotate(pts, rng.uniform(0, 2 * math.pi))
    if shape == "square":
        half = 0.85 * s
        pts = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
        return _rotate(pts, rng.uniform(-0.2, 0.2))
    if shape == "rectangle":
        aspect = rng.uniform(*ELONGATED_ASPECT)
        pts = np.array([[-s, -s / aspect], [s, -s / aspect], [s, s / aspect], [-s, s / aspect]])
        return _rotate(pts, rng.uniform(-0.35, 0.35))
    if shape == "diamond":
        aspect = rng.uniform(*DIAMOND_ASPECT)
        pts = np.array([[0.0, -s], [s / aspect, 0.0], [0.0, s], [-s / aspect, 0.0]])
        return _rotate(pts, rng.uniform(-0.25, 0.25))
    if shape == "triangle":
        return _regular(3, s, rng.uniform(0, 2 * math.pi))
    if shape == "hexagon":
        return _regular(6, 0.95 * s, rng.uniform(0, math.pi / 3))
    if shape == "star":
        outer = _regular(5, s, rng.uniform(0, 2 * math.pi / 5))
        phase = math.atan2(outer[0, 1], outer[0, 0]) + math.pi / 5
        inner = _regular(5, STAR_INNER_RATIO * s, phase)
        return np.stack([outer, inner], axis=1).reshape(-1, 2)
    raise ValueError(f"unknown shape type {shape!r}; known: {', '.join(SHAPE_TYPES)}")


def place_outline(outline: np.ndarray, centre_x: float, centre_y: float) -> list[float]:
    """Translate an outline so its box is centred on (centre_x, centre_y); flat, rounded list."""
    lo, hi = outline.min(axis=0), outline.max(axis=0)
    shifted = outline - (lo + hi) / 2 + np.array([centre_x, centre_y])
    return [round(float(v), 2) for v in shifted.reshape(-1)]


def polygon_bounds(polygon: list[float]) -> tuple[float, float, float, float]:
    """(min x, min y, max x, max y) of a flat polygon list."""
    xs, ys = polygon[0::2], polygon[1::2]
    return min(xs), min(ys), max(xs), max(ys)
