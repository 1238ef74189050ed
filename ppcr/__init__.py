"""PPCR: Progressive Prompt-guided Cross-modal Reasoning for referring image segmentation.

The public API::

    from ppcr import PPCRPredictor, build_model, evaluate, load_recipe, train

Public names are imported lazily so that ``import ppcr`` (and ``ppcr --help``) stays fast and
does not pull in torch; the ``TYPE_CHECKING`` block below names the same objects for type
checkers and editors, which never run it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ppcr.lazy import lazy_getattr
from ppcr.version import __version__

if TYPE_CHECKING:  # keep in step with _LAZY (tests/test_api.py checks both)
    from ppcr.api import evaluate as evaluate
    from ppcr.api import train as train
    from ppcr.config.loading import load_recipe as load_recipe
    from ppcr.config.schema import Recipe as Recipe
    from ppcr.errors import PPCRError as PPCRError
    from ppcr.evaluation.evaluate import EvalResult as EvalResult
    from ppcr.inference.predictor import PPCRPredictor as PPCRPredictor
    from ppcr.inference.predictor import Prediction as Prediction
    from ppcr.modeling.build import build_model as build_model
    from ppcr.modeling.model import PPCRModel as PPCRModel
    from ppcr.training.result import TrainResult as TrainResult

_LAZY = {
    "load_recipe": "ppcr.config.loading",
    "Recipe": "ppcr.config.schema",
    "PPCRError": "ppcr.errors",
    "build_model": "ppcr.modeling.build",
    "PPCRModel": "ppcr.modeling.model",
    "PPCRPredictor": "ppcr.inference.predictor",
    "Prediction": "ppcr.inference.predictor",
    "train": "ppcr.api",
    "TrainResult": "ppcr.training.result",
    "evaluate": "ppcr.api",
    "EvalResult": "ppcr.evaluation.evaluate",
}

__all__ = ["__version__", *_LAZY]


__getattr__ = lazy_getattr("ppcr", _LAZY)
