"""Is a COCO image entry / annotation usable? One short reason when it is not.

``instances.json`` comes from outside: a bbox such as ``[NaN, 1e308, -5, "x"]`` or an RLE whose
runs do not add up to the image passes a JSON parser and used to crash evaluation much later.
``ppcr prepare`` checks every annotation the refs use with these functions, and the reader
refuses a bad one with a :class:`~ppcr.errors.DataError` before using it. Reasons never quote
the offending values themselves (a hostile string can be huge); numbers are shown short.
"""

from __future__ import annotations

import math
from typing import Any

# COCO boxes are float pixel coordinates and may poke a little past the border.
BBOX_TOLERANCE_PX = 2.0
BBOX_TOLERANCE_FRACTION = 0.01
_NUMBER = (int, float)


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (bools, strings, NaN, infinities, ints beyond float)."""
    if type(value) not in _NUMBER:
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _short(value: float | int) -> str:
    if type(value) is int and abs(value) >= 10**9:
        return "<huge>"
    return f"{value:.6g}"


def image_size_problem(image: dict) -> str | None:
    """Why an ``images`` entry's width/height are unusable, or None."""
    for key in ("width", "height"):
        value = image.get(key)
        if type(value) is not int or value < 1:
            return f"image {key} must be a positive integer"
    return None


def bbox_problem(bbox: Any, width: int, height: int) -> str | None:
    """Why ``bbox`` is not a finite ``[x, y, w, h]`` of positive size inside a width×height image."""
    if type(bbox) not in (list, tuple) or len(bbox) != 4:
        return "bbox is not a list [x, y, w, h]"
    numbers = [_number(value) for value in bbox]
    for position, (value, number) in enumerate(zip(bbox, numbers)):
        if number is None:
            kind = type(value).__name__
            what = "not a finite number" if type(value) in _NUMBER else f"a {kind}, not a number"
            return f"bbox value {position + 1} of 4 is {what}"
    x, y, w, h = numbers
    if w <= 0 or h <= 0:
        return f"bbox has no area (w={_short(w)}, h={_short(h)})"
    tolerance = max(BBOX_TOLERANCE_PX, BBOX_TOLERANCE_FRACTION * max(width, height))
    if x < -tolerance or y < -tolerance or x + w > width + tolerance or y + h > height + tolerance:
        shown = ", ".join(_short(v) for v in numbers)
        return f"bbox [{shown}] lies outside the {width}x{height} image"
    return None


def _polygon_problem(part: Any) -> str | None:
    if any(_number(value) is None for value in part):
        return "a polygon holds a value that is not a finite number"
    if len(part) % 2:
        return "a polygon has an odd number of coordinates"
    return None


def compressed_run_lengths(counts: str) -> list[int] | None:
    """The run lengths of a COCO compressed RLE string, or None if it is malformed.

    The same decoding as pycocotools' ``rleFrString`` (5 bits per character from ``'0'``, a
    continuation bit, a sign bit, runs from the third on stored as the difference to the run two
    before), which itself does no checking: a string cut inside a number makes it read past the
    string's end, and runs that do not add up to the image leave its decoded mask uninitialised.
    """
    data = counts.encode("ascii")
    runs: list[int] = []
    position = 0
    while position < len(data):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(data) or shift > 30:  # cut inside a number, or beyond 32 bits
                return None
            code = data[position] - 48
            if not 0 <= code < 64:
                return None
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position += 1
            shift += 5
            if not more and code & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return None
        runs.append(value)
    return runs


def _rle_problem(rle: dict, width: int, height: int) -> str | None:
    if "counts" not in rle or "size" not in rle:
        return "RLE segmentation needs 'counts' and 'size'"
    size = rle["size"]
    if type(size) not in (list, tuple) or [type(v) for v in size] != [int, int]:
        return "RLE size is not two integers [height, width]"
    if list(size) != [height, width]:
        return f"RLE size [{_short(size[0])}, {_short(size[1])}] does not match the image's [{height}, {width}]"
    counts = rle["counts"]
    if type(counts) in (list, tuple):
        if not all(type(c) is int and 0 <= c < 2**32 for c in counts):
            return "RLE counts must be non-negative integers"
        runs = list(counts)
    elif type(counts) is str and counts.isascii():
        runs = compressed_run_lengths(counts)
        if runs is None:
            return "compressed RLE counts are not a valid RLE string"
    else:
        return "RLE counts must be a list of integers or an ASCII string"
    if sum(runs) != height * width:
        return f"RLE runs add up to {_short(sum(runs))} pixels, not the image's {height * width}"
    return None


def segmentation_problem(segmentation: Any, width: int, height: int) -> str | None:
    """Why a COCO segmentation (polygons, or compressed/uncompressed RLE) cannot be decoded into a
    width×height mask, or None. Checked before pycocotools sees it (see
    :func:`compressed_run_lengths` for why)."""
    if type(segmentation) is dict:
        return _rle_problem(segmentation, width, height)
    if type(segmentation) is not list:
        return "segmentation is neither polygons nor RLE"
    for part in segmentation:
        if type(part) is dict:
            problem = _rle_problem(part, width, height)
        elif type(part) in (list, tuple):
            problem = _polygon_problem(part)
        else:
            problem = f"segmentation part is a {type(part).__name__}"
        if problem:
            return problem
    return None


def annotation_problem(ann: dict, image: dict) -> str | None:
    """The first reason an annotation (with its image entry) cannot be used, or None."""
    problem = image_size_problem(image)
    if problem:
        return problem
    width, height = image["width"], image["height"]
    return bbox_problem(ann.get("bbox"), width, height) or segmentation_problem(
        ann.get("segmentation"), width, height
    )
