"""The tiny model's initialisation knobs (``tiny.init_std``, ``tiny.clip_position_init``) and size checks."""

from __future__ import annotations

import re

import pytest
import torch

from ppcr.config.schema import TinySpec
from ppcr.modeling.build import build_model
from ppcr.modeling.position_init import sincos_2d
from tests.tiny_recipes import tiny_recipe


def test_sincos_codes_separate_rows_from_columns_and_every_patch_from_every_other():
    grid, dim = 6, 16
    codes = sincos_2d(grid, dim).reshape(grid, grid, dim)
    y_half, x_half = codes[..., : dim // 2], codes[..., dim // 2 :]
    assert torch.allclose(y_half, y_half[:, :1].expand_as(y_half))  # y channels: same along a row
    assert torch.allclose(x_half, x_half[:1].expand_as(x_half))  # x channels: same down a column
    flat = codes.reshape(grid * grid, dim)
    distances = torch.cdist(flat, flat) + torch.eye(grid * grid) * 1e3
    assert float(distances.min()) > 0.1
    assert torch.allclose(flat.pow(2).sum(1), torch.full((grid * grid,), dim / 2.0))  # sin² + cos²
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(4, 6)


def test_clip_position_init_sincos_writes_the_patch_rows_and_keeps_the_cls_row():
    plain = build_model(tiny_recipe())
    coded = build_model(tiny_recipe(tiny={"clip_position_init": "sincos"}))
    plain_table = plain.llava.model.vision_tower.embeddings.position_embedding.weight
    coded_table = coded.llava.model.vision_tower.embeddings.position_embedding.weight
    grid = TinySpec().image_size // TinySpec().clip_patch_size
    assert torch.equal(coded_table[1:], sincos_2d(grid, TinySpec().clip_hidden))
    assert torch.equal(coded_table[0], plain_table[0])  # same seed, CLS row untouched
    assert float(plain_table[1:].std()) < 0.05  # the default stays transformers' small random init


@pytest.mark.parametrize("std", [0.02, 0.08])
def test_init_std_sets_the_llm_projector_and_clip_embedding_scale(std):
    model = build_model(tiny_recipe(tiny={"init_std": std}))
    llava = model.llava.model
    q_proj = llava.language_model.layers[0].self_attn.q_proj
    weights = {
        "llm q_proj": getattr(q_proj, "base_layer", q_proj).weight,
        "llm embeddings": llava.language_model.embed_tokens.weight,
        "projector": llava.multi_modal_projector.linear_1.weight,
        "clip positions": llava.vision_tower.embeddings.position_embedding.weight,
    }
    for name, weight in weights.items():
        assert float(weight.std()) == pytest.approx(std, rel=0.15), name


@pytest.mark.parametrize(
    ("tiny", "message"),
    [
        ({"image_size": 60}, "model.tiny.image_size: 60 is not divisible by model.tiny.clip_patch_size = 8"),
        ({"llm_hidden": 130}, "model.tiny.llm_hidden: 130 is not divisible by model.tiny.llm_heads = 4"),
        ({"sam_heads": 0}, "model.tiny.sam_heads: must be at least 1, got 0"),
        ({"init_std": -0.1}, "model.tiny.init_std: must be a positive number"),
        (
            {"clip_hidden": 66, "clip_heads": 2, "clip_position_init": "sincos"},
            "model.tiny.clip_hidden: must be divisible by 4 for clip_position_init=sincos",
        ),
    ],
)
def test_tiny_sizes_that_cannot_build_a_model_are_a_recipe_error_naming_the_key(tiny, message):
    from ppcr.errors import RecipeError

    with pytest.raises(RecipeError, match=re.escape(message)):
        build_model(tiny_recipe(tiny=tiny))
