"""``PPCRPredictor``: encode an image once, then ask for any number of referring expressions.

This is SAM's ``set_image`` / ``predict`` pattern: :meth:`PPCRPredictor.set_image`
runs both frozen vision encoders (CLIP through the projector, SAM's image encoder) once and
keeps their outputs; every :meth:`~PPCRPredictor.predict` / :meth:`~PPCRPredictor.predict_batch`
only runs the two LLM stages and SAM's light mask decoder against the cached features.
Results come back in the image's own pixel frame (upright, original size) as numpy / floats, so
callers never touch tensors.

Expressions longer than the model's context are shortened word by word from the end, exactly as
the processor does for training data; the predictor reports it (``Prediction.truncated`` and an
:class:`ExpressionTruncatedWarning`) instead of doing it silently.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ppcr.data import templates
from ppcr.data.refer import mask_to_rle
from ppcr.errors import CheckpointError, PPCRError
from ppcr.images import ImageSource, load_image

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

    from ppcr.modeling.model import ImageFeatures, PPCRModel
    from ppcr.modeling.processor import PPCRProcessor

Box = tuple[float, float, float, float]


class ExpressionTruncatedWarning(UserWarning):
    """An expression did not fit the model's context and lost its last words."""


@dataclass(frozen=True, eq=False)  # eq would compare numpy masks ambiguously
class Prediction:
    """One expression's result, in the pixel frame of the upright input image.

    ``mask``: H×W bool; ``box``: the predicted box ``(x1, y1, x2, y2)`` in pixels (corners
    ordered, clipped to the image) that was given to SAM as the Spatial Segmentation Prompt, or
    None for a model without a spatial stage (``spatial_prompt=none``); ``score``: the mean
    foreground probability inside the mask (0 for an empty mask); ``expression``: the text the
    model actually read (normalised, possibly shortened); ``truncated``: it was shortened;
    ``logits``: the H×W float32 mask logits (``mask == logits > 0``), only when asked for with
    ``return_logits=True`` (they cost four bytes a pixel).
    """

    mask: np.ndarray
    box: Optional[Box]
    score: float
    expression: str = ""
    truncated: bool = False
    logits: Optional[np.ndarray] = None

    @property
    def area(self) -> int:
        """Mask area in pixels."""
        return int(np.count_nonzero(self.mask))

    @property
    def finite_box(self) -> Optional[list[float]]:
        """The box as floats, or None when there is none or any corner is not finite."""
        return _finite_box(self.box)

    @property
    def finite_score(self) -> Optional[float]:
        """The score, or None when it is not finite."""
        return _finite(self.score)

    def to_dict(self) -> dict[str, Any]:
        """A plain, strictly JSON-serialisable summary: what ``ppcr predict --format json`` prints.

        ``mask`` is COCO run-length encoding (``{"size": [H, W], "counts": str}``, what
        ``pycocotools.mask.decode`` reads back). A non-finite number becomes None (JSON null): a
        box with any non-finite corner is None as a whole, as is a non-finite score.
        """
        return {
            "expression": self.expression,
            "truncated": self.truncated,
            "box": self.finite_box,
            "score": self.finite_score,
            "area": self.area,
            "mask": mask_to_rle(self.mask),
        }


def _finite(value: Optional[float]) -> Optional[float]:
    return float(value) if value is not None and math.isfinite(value) else None


def _finite_box(box: Optional[Box]) -> Optional[list[float]]:
    if box is None or not all(math.isfinite(v) for v in box):
        return None
    return [float(v) for v in box]


class PPCRPredictor:
    """Referring segmentation of one image at a time with a loaded :class:`PPCRModel`.

    Build it with :meth:`from_pretrained` (a checkpoint directory, a hub id, or the embedded
    default) or from a model already in memory: ``PPCRPredictor(model)``.
    """

    def __init__(
        self,
        model: "PPCRModel",
        processor: Optional["PPCRProcessor"] = None,
        *,
        share_prefix: bool = True,
    ):
        from ppcr.modeling.processor import PPCRProcessor

        self.model = model.eval()
        self.processor = processor if processor is not None else PPCRProcessor.from_model(model)
        self.share_prefix = share_prefix
        self._features: Optional["ImageFeatures"] = None
        self._image: Optional["Image.Image"] = None

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike[str] | None = None,
        device: str = "auto",
        dtype: str = "fp32",
    ) -> "PPCRPredictor":
        """Load a checkpoint (``None``: the embedded default model) onto ``device`` in ``dtype``.

        ``device``: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``; ``dtype``: ``fp32`` | ``bf16`` |
        ``fp16`` | ``auto`` (bf16 on a GPU that has it, else fp32). Device and dtype are checked
        before any weights are read.
        """
        from ppcr.inference.model_source import resolve_model_dir
        from ppcr.modeling.model import PPCRModel
        from ppcr.utils.device import resolve_device, resolve_dtype

        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        directory = resolve_model_dir(path_or_hub_id)
        try:
            model = PPCRModel.from_pretrained(directory, dtype=torch_dtype, device=torch_device)
        except PPCRError:
            raise
        except Exception as error:  # a reader failing on a damaged file the loaders did not anticipate
            if not _is_file_error(error):
                raise
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CheckpointError(
                f"cannot load the model in {directory}: {reason}",
                hint="a file of the checkpoint is missing or damaged; copy or save it again",
            ) from None
        return cls(model)

    # ------------------------------------------------------------------ state

    @property
    def device(self) -> "torch.device":
        return next(self.model.parameters()).device

    @property
    def image(self) -> Optional["Image.Image"]:
        """The current image as the model sees it (upright 8-bit RGB), or None."""
        return self._image

    @property
    def image_size(self) -> Optional[tuple[int, int]]:
        """(height, width) of the current image, or None."""
        return None if self._image is None else (self._image.height, self._image.width)

    @property
    def max_length(self) -> int:
        """The model's context budget for a prompt's text tokens (image tokens not counted)."""
        return self.processor.max_length

    def set_image(self, image: ImageSource) -> None:
        """Read ``image`` (path, PIL image or H×W×C array) and encode it once for later predicts.

        The previous image is forgotten first, so a failure here never leaves stale features
        that a later ``predict`` would silently use.
        """
        self.reset_image()
        rgb = load_image(image)
        inputs = self.processor.images([rgb]).to(self.device)
        self._features = self.model.encode_images(inputs)
        self._image = rgb

    def reset_image(self) -> None:
        """Forget the current image and its cached features."""
        self._features = None
        self._image = None

    # ------------------------------------------------------------------ text

    def fit_expression(self, expression: str) -> tuple[str, bool]:
        """(text the model will read, whether it had to be shortened to fit ``max_length``).

        Raises ``DataError`` for an empty expression or one whose first word alone is too long.
        """
        if not isinstance(expression, str):
            raise PPCRError(f"an expression must be a string, got {type(expression).__name__}")
        full = templates.normalise_expression(expression)
        kept = self.processor.fitted_expression(full)
        return kept, kept != full

    # ------------------------------------------------------------------ prediction

    def predict(self, expression: str, *, return_logits: bool = False) -> Prediction:
        """Segment what ``expression`` refers to in the current image.

        ``return_logits``: also return the mask logits (``Prediction.logits``).
        """
        if not isinstance(expression, str):
            raise PPCRError(
                f"predict takes one expression (a string), got {type(expression).__name__}",
                hint="use predict_batch for several expressions",
            )
        return self.predict_batch([expression], return_logits=return_logits)[0]

    def predict_batch(
        self, expressions: Sequence[str], batch_size: Optional[int] = None, *, return_logits: bool = False
    ) -> list[Prediction]:
        """Segment several expressions of the current image, batched through both LLM stages.

        All expressions go through one call of the model unless ``batch_size`` caps how many
        share a call (to bound memory). Results are in the order of ``expressions``.
        ``return_logits``: also return each mask's logits (``Prediction.logits``).
        """
        if isinstance(expressions, str):
            raise PPCRError("predict_batch takes a list of expressions, got a single string",
                            hint="use predict for one expression")
        if self._features is None or self._image is None:
            raise PPCRError("no image is set", hint="call set_image(image) before predict")
        if batch_size is not None and batch_size < 1:
            raise PPCRError(f"batch_size must be at least 1, got {batch_size}")
        fitted = [self.fit_expression(e) for e in expressions]
        for original, (text, truncated) in zip(expressions, fitted):
            if truncated:
                warnings.warn(
                    ExpressionTruncatedWarning(
                        f"expression {original[:40]!r}… was shortened to {len(text.split())} words "
                        f"to fit the model's context ({self.max_length} text tokens)"
                    ),
                    stacklevel=2,
                )
        step = batch_size or max(1, len(fitted))
        results: list[Prediction] = []
        for start in range(0, len(fitted), step):
            results.extend(self._run(fitted[start : start + step], return_logits))
        return results

    def _run(self, fitted: list[tuple[str, bool]], return_logits: bool) -> list[Prediction]:
        texts = self.processor.texts([t for t, _ in fitted], [0] * len(fitted))
        output = self.model.segment(self._features, texts.to(self.device), share_prefix=self.share_prefix)
        height, width = self.image_size
        boxes = None if output.boxes is None else output.boxes.detach().float().cpu().numpy()
        scores = output.scores.detach().float().cpu().numpy()
        results = []
        for b, (text, truncated) in enumerate(fitted):
            logits = output.mask_logits[b]
            mask = (logits > 0).cpu().numpy()
            kept = logits.detach().float().cpu().numpy() if return_logits else None
            box = None if boxes is None else _pixel_box(boxes[b], width, height)
            results.append(
                Prediction(
                    mask=mask, box=box, score=float(scores[b]), expression=text, truncated=truncated, logits=kept
                )
            )
        return results


def _pixel_box(normalised: np.ndarray, width: int, height: int) -> Box:
    """Normalised xyxy (any corner order) → ordered pixel corners inside the image."""
    x1, y1, x2, y2 = (float(v) for v in normalised)
    xs = sorted((min(max(x1, 0.0), 1.0) * width, min(max(x2, 0.0), 1.0) * width))
    ys = sorted((min(max(y1, 0.0), 1.0) * height, min(max(y2, 0.0), 1.0) * height))
    return (xs[0], ys[0], xs[1], ys[1])


def _is_file_error(error: BaseException) -> bool:
    """Errors a weights reader raises on a missing, truncated or garbled file."""
    if isinstance(error, (OSError, ValueError, EOFError)):
        return True
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(error, SafetensorError)
