"""Checks of the recipe's ``loss`` section that need no model: they fail before any work starts."""

from __future__ import annotations

import math
from dataclasses import asdict

from ppcr.config.schema import LossSpec
from ppcr.errors import RecipeError


def check_loss_spec(loss: LossSpec) -> None:
    """Every weight is finite and non-negative (a negative one would reward the error it weighs)."""
    for name, value in asdict(loss).items():
        if not math.isfinite(value) or value < 0:
            raise RecipeError(f"loss.{name}: must be a finite weight of 0 or more, got {value}")
