"""Checks of recipe sections that need no model or data: they fail before any work starts.

(``train`` has its own, with the step arithmetic, in :mod:`ppcr.training.plan`; ``model.tiny``
in :mod:`ppcr.config.tiny_checks`.)
"""

from __future__ import annotations

import math
from dataclasses import asdict

from ppcr.config.schema import DataSpec, LossSpec
from ppcr.errors import RecipeError


def check_data_spec(data: DataSpec) -> None:
    """Settings of ``data`` that the types alone allow but no run can use."""
    if data.sentences_per_image < 1:
        raise RecipeError(f"data.sentences_per_image: must be at least 1, got {data.sentences_per_image}")


def check_loss_spec(loss: LossSpec) -> None:
    """Every weight is finite and non-negative (a negative one would reward the error it weighs)."""
    for name, value in asdict(loss).items():
        if not math.isfinite(value) or value < 0:
            raise RecipeError(f"loss.{name}: must be a finite weight of 0 or more, got {value}")
