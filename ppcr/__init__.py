"""PPCR: Progressive Prompt-guided Cross-modal Reasoning for referring image segmentation.

Public names are imported lazily so that ``import ppcr`` (and ``ppcr --help``) stays fast and
does not pull in torch.
"""

from __future__ import annotations

from ppcr.lazy import lazy_getattr
from ppcr.version import __version__

_LAZY = {
    "load_recipe": "ppcr.config.loading",
    "Recipe": "ppcr.config.schema",
    "PPCRError": "ppcr.errors",
    "PPCRPredictor": "ppcr.inference.predictor",
}

__all__ = ["__version__", *_LAZY]


__getattr__ = lazy_getattr("ppcr", _LAZY)
