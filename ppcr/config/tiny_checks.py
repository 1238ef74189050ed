"""Checks on ``model.tiny`` that the types alone cannot express (part of ``check_recipe``).

Why: a tiny size that does not divide (a width not split evenly into heads, an image not cut
evenly into patches) otherwise surfaces as a transformers validation error or a silent floor
deep inside model construction, after the run directory and data have been prepared.
"""

from __future__ import annotations

import math

from ppcr.config.schema import ModelSpec
from ppcr.errors import RecipeError


def _fail(key: str, message: str) -> RecipeError:
    return RecipeError(f"model.tiny.{key}: {message}")


def _divides(spec, whole: str, part: str) -> None:
    a, b = getattr(spec, whole), getattr(spec, part)
    if b < 1 or a < 1:
        raise _fail(whole if a < 1 else part, f"must be at least 1, got {a if a < 1 else b}")
    if a % b:
        raise _fail(whole, f"{a} is not divisible by model.tiny.{part} = {b}")


def check_tiny_spec(model: ModelSpec) -> None:
    """Raise a RecipeError naming the ``model.tiny`` key whose value cannot build a model."""
    tiny = model.tiny
    if model.size == "tiny":
        _divides(tiny, "image_size", "clip_patch_size")
        _divides(tiny, "clip_hidden", "clip_heads")
        _divides(tiny, "llm_hidden", "llm_heads")
        for key in ("clip_layers", "llm_layers"):
            if getattr(tiny, key) < 1:
                raise _fail(key, f"must be at least 1, got {getattr(tiny, key)}")
        if not (math.isfinite(tiny.init_std) and tiny.init_std > 0):
            raise _fail("init_std", f"must be a positive number, got {tiny.init_std}")
        if tiny.clip_position_init == "sincos" and tiny.clip_hidden % 4:
            raise _fail("clip_hidden", f"must be divisible by 4 for clip_position_init=sincos, got {tiny.clip_hidden}")
    if model.sam == "tiny":
        _divides(tiny, "sam_image_size", "sam_patch_size")
        _divides(tiny, "sam_embed_dim", "sam_heads")
        # The mask decoder upscales to sam_prompt_dim // 8 channels, and its cross-attention works
        # at half the width, split into sam_decoder_heads.
        if tiny.sam_prompt_dim < 8:
            raise _fail("sam_prompt_dim", f"must be at least 8, got {tiny.sam_prompt_dim}")
        _divides(tiny, "sam_prompt_dim", "sam_decoder_heads")
        half = tiny.sam_prompt_dim // 2
        if tiny.sam_prompt_dim % 2 or half % tiny.sam_decoder_heads:
            raise _fail(
                "sam_prompt_dim",
                f"half of it ({tiny.sam_prompt_dim} / 2, SAM's cross-attention width) is not divisible by "
                f"model.tiny.sam_decoder_heads = {tiny.sam_decoder_heads}",
            )
