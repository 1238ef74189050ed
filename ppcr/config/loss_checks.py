"""Checks of the recipe's ``loss`` section that need no model: they fail before any work starts."""

from __future__ import annotations

import math
from dataclasses import asdict

from ppcr.config.schema import Recipe
from ppcr.errors import RecipeError


def check_loss_spec(recipe: Recipe) -> None:
    """Weights are finite and non-negative; ``box_attention`` comes with eager attention."""
    for name, value in asdict(recipe.loss).items():
        if not math.isfinite(value) or value < 0:
            raise RecipeError(f"loss.{name}: must be a finite weight of 0 or more, got {value}")
    if recipe.loss.box_attention > 0 and recipe.model.attn_implementation != "eager":
        raise RecipeError(
            "loss.box_attention needs the LLM's attention weights, which "
            f"model.attn_implementation={recipe.model.attn_implementation} does not return",
            hint="set model.attn_implementation=eager",
        )
