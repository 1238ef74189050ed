"""What the demo page does with one request, as a plain function: image + typed text → results.

The text holds one expression per line (blank lines are skipped). The image is encoded once and
all its expressions are batched (:meth:`PPCRPredictor.set_image` then ``predict_batch``); if the
predictor already holds the same pixels (the user only changed the text), the encoding is reused.
Each expression gets the image with its mask tinted and its predicted box (the Spatial
Segmentation Prompt) outlined, as ``ppcr predict --overlay`` draws it but in cyan (:data:`TINT`,
visible on every Shapes-Ref colour), and a table row.

Bad input is a one-line :class:`~ppcr.errors.PPCRError` (the page shows its message): no image,
no expression, too many or too long expressions, an image over :data:`MAX_IMAGE_PIXELS`.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from ppcr.errors import ImageError, PPCRError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from ppcr.inference.predictor import PPCRPredictor, Prediction

# A request's limits: the masks (one byte a pixel each, kept until drawn) and the overlays grow
# with pixels × expressions; the tiny default model reads 64-px CLIP and 128-px SAM inputs anyway.
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_EXPRESSIONS = 16
MAX_TEXT_CHARS = 4000
TABLE_HEADERS = ["#", "expression", "x1", "y1", "x2", "y2", "score", "area (px)"]
# Shapes-Ref draws red, orange, yellow, green, blue and purple objects: a cyan tint stands out on all.
TINT = (0, 215, 255)
TINT_ALPHA = 0.6

ImageInput = Union[str, Path, "Image.Image", np.ndarray, None]


@dataclass
class SegmentedExpression:
    """One expression's result: what was typed, the prediction and its overlay."""

    expression: str
    prediction: "Prediction"
    overlay: "Image.Image"

    def row(self, number: int) -> list[Any]:
        """The table row (box rounded to 0.01 px, score to 4 places, as ``ppcr predict`` prints)."""
        box = self.prediction.finite_box or [None] * 4
        score = self.prediction.finite_score
        return [
            number,
            self.expression,
            *(None if v is None else round(v, 2) for v in box),
            None if score is None else round(score, 4),
            self.prediction.area,
        ]


@dataclass
class DemoResult:
    """Everything the page shows for one request."""

    width: int
    height: int
    items: list[SegmentedExpression]
    encoded: bool  # False: the predictor already held this image's features
    seconds: float
    notes: list[str] = field(default_factory=list)

    def table(self) -> list[list[Any]]:
        return [item.row(number) for number, item in enumerate(self.items, start=1)]

    def details(self) -> list[dict[str, Any]]:
        """Per expression: ``Prediction.to_dict()`` (mask as COCO RLE) plus the text as typed."""
        return [{"typed": item.expression, **item.prediction.to_dict()} for item in self.items]

    def status(self, model_label: str = "") -> str:
        count = len(self.items)
        what = "encoded once" if self.encoded else "already encoded, reused"
        model = f" with {model_label}" if model_label else ""
        lines = [
            f"{count} expression{'s' if count != 1 else ''} on a {self.width}×{self.height} image "
            f"({what}) in {self.seconds:.2f} s{model}."
        ]
        return "\n\n".join(lines + [f"⚠ {note}" for note in self.notes])


def parse_expressions(text: Optional[str], max_expressions: int = MAX_EXPRESSIONS) -> list[str]:
    """One expression per non-blank line, stripped; a one-line error if there is none or too many."""
    if text is None or not text.strip():
        raise PPCRError("type at least one referring expression (one per line)")
    if len(text) > MAX_TEXT_CHARS:
        raise PPCRError(f"the text is {len(text):,} characters long; at most {MAX_TEXT_CHARS:,} are read")
    expressions = [line.strip() for line in text.splitlines() if line.strip()]
    if len(expressions) > max_expressions:
        raise PPCRError(
            f"{len(expressions)} expressions; at most {max_expressions} a request",
            hint="split them over several requests",
        )
    return expressions


def read_image(image: ImageInput) -> "Image.Image":
    """The image as the model reads it (:func:`ppcr.images.load_image`), size-checked first.

    A file's size is read from its header before its pixels are decoded, so a huge image is
    refused without being decompressed.
    """
    from ppcr.images import load_image

    if image is None or (isinstance(image, str) and not image.strip()):
        raise ImageError("no image: upload one or pick an example")
    if isinstance(image, (str, Path)):
        _check_size(*_header_size(Path(image)))
    elif isinstance(image, np.ndarray) and image.ndim >= 2:
        _check_size(int(image.shape[1]), int(image.shape[0]))
    elif hasattr(image, "size"):
        _check_size(*image.size)
    return load_image(image)


def _header_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                return opened.size
    except (FileNotFoundError, IsADirectoryError):
        raise ImageError(f"image not found: {path.name}") from None
    except Image.DecompressionBombError:  # over twice PIL's own limit: refused before its size is known
        raise ImageError(
            f"the image has more pixels than PIL opens safely; the demo takes at most {MAX_IMAGE_PIXELS / 1e6:.1f} MP",
            hint="downscale it first",
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if isinstance(error, UnidentifiedImageError):
            reason = "not a recognised image format"
        raise ImageError(f"cannot read the image {path.name}: {reason}") from None


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"the image is {width}×{height} pixels ({width * height / 1e6:.1f} MP); the demo takes at most "
            f"{MAX_IMAGE_PIXELS / 1e6:.1f} MP",
            hint="downscale it first",
        )


def draw_overlay(rgb: "Image.Image", prediction: "Prediction") -> "Image.Image":
    """The image with the prediction's mask tinted and its box outlined in :data:`TINT`."""
    from ppcr.images import overlay

    # overlay leaves out a box with a non-finite corner (only the mask is drawn; the table says null)
    return overlay(rgb, prediction.mask, prediction.box, alpha=TINT_ALPHA, color=TINT)


def segment_expressions(
    predictor: "PPCRPredictor", image: ImageInput, text: Optional[str], *, max_expressions: int = MAX_EXPRESSIONS
) -> DemoResult:
    """Segment every expression of ``text`` (one per line) in ``image`` with one image encoding."""
    from ppcr.inference.predictor import ExpressionTruncatedWarning

    rgb = read_image(image)
    expressions = parse_expressions(text, max_expressions)
    started = time.perf_counter()
    current = predictor.image
    encoded = current is None or current.size != rgb.size or not np.array_equal(np.asarray(current), np.asarray(rgb))
    if encoded:
        predictor.set_image(rgb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExpressionTruncatedWarning)  # reported below, once per expression
        predictions = predictor.predict_batch(expressions)
    items = [
        SegmentedExpression(expression, prediction, draw_overlay(rgb, prediction))
        for expression, prediction in zip(expressions, predictions)
    ]
    notes = [
        f"expression {number} is longer than the model's context ({predictor.max_length} text tokens); "
        f"only its first {len(item.prediction.expression.split())} words were read"
        for number, item in enumerate(items, start=1)
        if item.prediction.truncated
    ]
    return DemoResult(
        width=rgb.width,
        height=rgb.height,
        items=items,
        encoded=encoded,
        seconds=time.perf_counter() - started,
        notes=notes,
    )
