"""The demo server's state: the model in use (loaded on first request, swapped when the picker
changes) and a lock, because the page may send requests from several browser tabs at once."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ppcr.serving.segment import DemoResult, ImageInput, segment_expressions

if TYPE_CHECKING:  # pragma: no cover
    from ppcr.inference.predictor import PPCRPredictor


class DemoSession:
    """One loaded predictor at a time (a 7B model is too big to keep several), on ``device``/``dtype``."""

    def __init__(self, device: str = "auto", dtype: str = "fp32"):
        self.device = device
        self.dtype = dtype
        self._lock = threading.Lock()
        self._source: Optional[str] = None
        self._predictor: Optional["PPCRPredictor"] = None

    def predictor(self, source: Optional[str]) -> "PPCRPredictor":
        """The predictor for ``source`` (a folder, a hub id, or None/empty for the embedded default),
        loading it if another one is in use. Callers hold the lock."""
        from ppcr.inference.model_source import resolve_model_dir
        from ppcr.inference.predictor import PPCRPredictor

        directory = resolve_model_dir(source.strip() if source and source.strip() else None)
        key = str(Path(directory).resolve())
        if self._predictor is None or self._source != key:
            self._predictor = None  # free the previous model before loading the next
            self._predictor = PPCRPredictor.from_pretrained(directory, device=self.device, dtype=self.dtype)
            self._source = key
        return self._predictor

    def load(self, source: Optional[str]) -> None:
        """Load ``source`` now (``ppcr serve`` does so before it starts, so a bad --model fails fast)."""
        with self._lock:
            self.predictor(source)

    def segment(self, source: Optional[str], image: ImageInput, text: Optional[str]) -> DemoResult:
        """:func:`~ppcr.serving.segment.segment_expressions` with the model ``source``."""
        from ppcr.serving.segment import parse_expressions, read_image

        if image is None:  # cheap checks first: no model is loaded for a request that cannot run
            read_image(image)
        parse_expressions(text)
        with self._lock:
            return segment_expressions(self.predictor(source), image, text)
