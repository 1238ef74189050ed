"""Reading any input image as upright 8-bit RGB, writing masks, drawing overlays.

Every entry point (CLI ``infer``, evaluation, the dataset reader) goes through ``load_image`` so
that all of them see the same pixels: EXIF orientation applied, every PIL mode converted the same
way. Conversion rules (chosen once, here):

- alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency, ``RGBa``/``La``) is composited onto
  **white**, as transformers' ``convert_to_rgb`` does for CLIP-style processors; simply dropping
  the alpha would expose whatever colour the fully transparent pixels happen to store;
- ``L``/``1`` are replicated to three channels; ``CMYK`` and ``YCbCr`` use PIL's conversion
  (no ICC colour management);
- 16-bit data (``I;16*`` modes, uint16 arrays) is scaled by 255/65535 and rounded, so it keeps
  its contrast instead of being clipped at 255; 32-bit ``I`` data (and other integer arrays) is
  taken as it is when it lies in 0..255, scaled like 16-bit data when it lies in 0..65535, and
  stretched min..max to 0..255 otherwise;
- float (``F`` / float arrays): values in [0, 1] are scaled by 255, values in [0, 255] are taken
  as they are, anything else is stretched min..max; NaN becomes 0.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from ppcr.errors import ImageError
from ppcr.io import atomic_path

ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray]

PRED_COLOR = (255, 48, 48)
GT_COLOR = (48, 220, 48)
OVERLAY_BAND_PIXELS = 1 << 16  # pixels blended at a time by ``overlay``: bounds its float temporaries
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def load_image(source: ImageSource) -> Image.Image:
    """Return ``source`` (a path, a PIL image or an array) as an upright RGB PIL image.

    Arrays are H×W (grey) or H×W×C with C in {1, 3, 4}, of dtype bool, uint8, uint16 or float;
    they carry no EXIF. A missing, directory, unreadable or corrupt file raises ``ImageError``.
    """
    if isinstance(source, np.ndarray):
        return _to_rgb(_array_to_pil(source))
    if isinstance(source, Image.Image):
        return _to_rgb(_upright(source))
    if isinstance(source, (str, os.PathLike)):
        return _to_rgb(_open(Path(source)))
    raise ImageError(
        f"cannot read an image from a {type(source).__name__}",
        hint="pass a file path, a PIL image or a numpy array",
    )


def _open(path: Path) -> Image.Image:
    if not path.exists():
        raise ImageError(f"image not found: {path}", hint="check the path and the images folder")
    if path.is_dir():
        raise ImageError(f"{path} is a directory, not an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # said in one line below
            opened_file = Image.open(path)
        with opened_file as opened:
            _warn_if_large(path, opened.size)
            opened.load()
            image = _upright(opened)
            if image is opened:
                image = opened.copy()
    except UnidentifiedImageError:
        raise ImageError(f"cannot read image {path}: not a recognised image format") from None
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise ImageError(
            f"image {path} is too large to read safely: more than {limit:,} pixels "
            "(twice PIL's decompression-bomb limit)",
            hint="downscale it first (the model works on it at 1024 pixels at most)",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ImageError(f"cannot read image {path}: {reason}") from None
    return image


class LargeImageWarning(UserWarning):
    """An image is bigger than PIL's decompression-bomb limit (but below twice that, where PIL
    refuses it): it is read, and the reader is told once, in one line."""


def _warn_if_large(path: Path, size: tuple[int, int]) -> None:
    width, height = size
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        warnings.warn(
            LargeImageWarning(
                f"image {path} is {width}×{height} ({width * height:,} pixels), more than PIL's "
                f"decompression-bomb limit of {limit:,}; reading it anyway"
            ),
            stacklevel=4,
        )


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block is ignored (the pixels are still valid)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError):
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        return _grey_to_rgb(_to_uint8(np.asarray(image)))
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ImageError(f"unsupported image mode {mode!r}: {error}") from None


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Map grey values of any numeric dtype to uint8 by the rules in the module docstring."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if np.issubdtype(values.dtype, np.floating):
        data = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
        if low >= 0.0 and high <= 1.0:
            data = data * 255.0
        elif not (low >= 0.0 and high <= 255.0):
            data = _stretch(data, low, high)
        return np.clip(np.rint(data), 0, 255).astype(np.uint8)
    if np.issubdtype(values.dtype, np.integer):
        data = values.astype(np.int64)
        low, high = (int(data.min()), int(data.max())) if data.size else (0, 0)
        sixteen_bit = values.dtype.kind == "u" and values.dtype.itemsize == 2
        if not sixteen_bit and low >= 0 and high <= 255:
            return data.astype(np.uint8)
        if sixteen_bit or (low >= 0 and high <= 65535):
            return np.rint(data * (255.0 / 65535.0)).astype(np.uint8)
        return np.clip(np.rint(_stretch(data.astype(np.float64), low, high)), 0, 255).astype(np.uint8)
    raise ImageError(f"unsupported pixel type {values.dtype}")


def _stretch(data: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros_like(data)
    return (data - low) * (255.0 / (high - low))


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        if array.dtype == np.uint8:
            return Image.fromarray(array, "L")
        return _grey_to_rgb(_to_uint8(array))
    if array.ndim == 3 and array.shape[2] in (3, 4):
        channels = array if array.dtype == np.uint8 else _to_uint8(array)
        return Image.fromarray(np.ascontiguousarray(channels), "RGB" if array.shape[2] == 3 else "RGBA")
    raise ImageError(
        f"cannot read an image from an array of shape {array.shape}",
        hint="expected H×W or H×W×C with C in 1, 3, 4",
    )


def save_mask_png(mask: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a binary H×W mask atomically as an 8-bit grey PNG (0 = background, 255 = object)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H×W), got shape {mask.shape}")
    pixels = (mask != 0).astype(np.uint8) * 255
    with atomic_path(path) as tmp:
        Image.fromarray(pixels, "L").save(tmp, format="PNG")
    return Path(path)


def overlay(
    image: ImageSource,
    mask: np.ndarray | None = None,
    box_xyxy: tuple[float, float, float, float] | np.ndarray | None = None,
    gt_mask: np.ndarray | None = None,
    gt_box: tuple[float, float, float, float] | np.ndarray | None = None,
    alpha: float = 0.5,
    color: tuple[int, int, int] = PRED_COLOR,
) -> Image.Image:
    """Draw a prediction over ``image`` for a human to check.

    The predicted mask is tinted ``color`` (red by default; ``alpha`` blend) and its box outlined
    in it; the ground truth is drawn as outlines only (green mask contour, green box) so both stay
    readable where they overlap. Masks must be H×W like the image; boxes are pixel ``(x1, y1, x2, y2)`` in the
    image's frame (corners in any order); a box with a non-finite corner is not drawn.

    Memory stays near one uint8 copy of the image however big it is: the blend is computed in
    bands of about :data:`OVERLAY_BAND_PIXELS` pixels, never as a float copy of the whole image
    (a 12000×9000 photo would otherwise need gigabytes).
    """
    base = load_image(image)
    width, height = base.size
    region = None if mask is None else _check_mask(mask, height, width, "mask")
    outline = None if gt_mask is None else _check_mask(gt_mask, height, width, "gt_mask")
    result = base.copy()
    if region is not None or outline is not None:
        rows = max(1, OVERLAY_BAND_PIXELS // max(1, width))
        tint = np.asarray(color, dtype=np.float32)
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            band = np.array(result.crop((0, top, width, bottom)))
            if region is not None:
                inside = region[top:bottom]
                band[inside] = np.clip(np.rint((1.0 - alpha) * band[inside].astype(np.float32) + alpha * tint), 0, 255)
            if outline is not None:
                band[_contour_rows(outline, top, bottom)] = GT_COLOR
            result.paste(Image.fromarray(band, "RGB"), (0, top))
    draw = ImageDraw.Draw(result)
    line = max(1, round(min(width, height) / 200))
    for box, edge in ((gt_box, GT_COLOR), (box_xyxy, color)):
        if box is not None:
            x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
            if not all(np.isfinite((x1, y1, x2, y2))):
                continue
            draw.rectangle(
                (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)), outline=edge, width=line
            )
    return result


def _check_mask(mask: np.ndarray, height: int, width: int, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != (height, width):
        raise ValueError(f"{name} has shape {mask.shape}, image is {(height, width)}")
    return mask if mask.dtype == np.bool_ else mask != 0  # a bool mask is used as it is, not copied


def _contour_rows(mask: np.ndarray, top: int, bottom: int) -> np.ndarray:
    """Pixels of ``mask`` in rows ``top:bottom`` with at least one 4-neighbour outside it (the image
    border counts as outside); reads one row above and below."""
    above, below = max(0, top - 1), min(mask.shape[0], bottom + 1)
    window = np.pad(mask[above:below], ((top - above == 0, bottom + 1 - below), (1, 1)), constant_values=False)
    rows = window[1:-1, 1:-1]
    interior = window[:-2, 1:-1] & window[2:, 1:-1] & window[1:-1, :-2] & window[1:-1, 2:] & rows
    return rows & ~interior
