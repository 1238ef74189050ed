"""PPCR: Progressive Prompt-guided Cross-modal Reasoning for referring image segmentation.

Public names are imported lazily so that ``import ppcr`` (and ``ppcr --help``) stays fast and
does not pull in torch.
"""

from __future__ import annotations

import importlib

from ppcr.version import __version__

_LAZY = {
    "load_recipe": "ppcr.config.loading",
    "Recipe": "ppcr.config.schema",
    "PPCRError": "ppcr.errors",
    "PPCRPredictor": "ppcr.inference.predictor",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ppcr' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
