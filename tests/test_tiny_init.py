"""The tiny model's initialisation knobs (``tiny.init_std``, ``tiny.clip_position_init``,
``tiny.llm_qk_init_std``) and size checks."""

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


def _base(linear: torch.nn.Module) -> torch.Tensor:
    return getattr(linear, "base_layer", linear).weight


def test_llm_qk_init_std_redraws_only_the_llm_query_and_key_and_scales_the_start_logits():
    width = TinySpec().llm_hidden
    std = width**-0.5
    plain = build_model(tiny_recipe())
    scaled = build_model(tiny_recipe(tiny={"llm_qk_init_std": std}))
    for layer_plain, layer_scaled in zip(plain.language_model.layers, scaled.language_model.layers):
        attention_plain, attention = layer_plain.self_attn, layer_scaled.self_attn
        for name in ("q_proj", "k_proj"):
            assert float(_base(getattr(attention, name)).std()) == pytest.approx(std, rel=0.05), name
        for name in ("v_proj", "o_proj"):  # same seed: everything else is drawn exactly as before
            assert torch.equal(_base(getattr(attention, name)), _base(getattr(attention_plain, name)))
        assert torch.equal(layer_scaled.mlp.down_proj.weight, layer_plain.mlp.down_proj.weight)
    clip_q = [m.llava.model.vision_tower.encoder.layers[0].self_attn.q_proj.weight for m in (plain, scaled)]
    assert torch.equal(*clip_q)  # CLIP keeps init_std

    def start_logit_std(model) -> float:
        """Std of layer 0's scaled query·key logits on unit-RMS states (what RMSNorm feeds it)."""
        attention = model.language_model.layers[0].self_attn
        heads, states = TinySpec().llm_heads, torch.randn(256, width, generator=torch.Generator().manual_seed(0))
        q = (states @ _base(attention.q_proj).T).reshape(256, heads, -1).transpose(0, 1)
        k = (states @ _base(attention.k_proj).T).reshape(256, heads, -1).transpose(0, 1)
        return float((q @ k.transpose(1, 2) / q.shape[-1] ** 0.5).std())

    assert start_logit_std(plain) < 0.1  # std 0.02 at width 128: attention starts uniform
    assert 0.6 < start_logit_std(scaled) < 1.6  # std 1/sqrt(width): order one, as a 7B model at 0.02


@pytest.mark.parametrize(
    ("tiny", "message"),
    [
        ({"image_size": 60}, "model.tiny.image_size: 60 is not divisible by model.tiny.clip_patch_size = 8"),
        ({"llm_hidden": 130}, "model.tiny.llm_hidden: 130 is not divisible by model.tiny.llm_heads = 4"),
        ({"sam_heads": 0}, "model.tiny.sam_heads: must be at least 1, got 0"),
        ({"init_std": -0.1}, "model.tiny.init_std: must be a positive number"),
        ({"llm_qk_init_std": 0.0}, "model.tiny.llm_qk_init_std: must be a positive number"),
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
