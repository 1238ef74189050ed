"""``loss.box_attention``: the spatial query's attention pulled onto the target's CLIP patches."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from ppcr.config.schema import LossSpec
from ppcr.data.preprocess import ClipPreprocess
from ppcr.errors import PPCRError
from ppcr.modeling.box_attention import patch_coverage, target_attention_nll
from ppcr.modeling.build import build_model
from ppcr.modeling.processor import PPCRProcessor
from tests.test_model_forward import synthetic_samples
from tests.tiny_recipes import tiny_recipe


@pytest.mark.parametrize("pad_to_square", [True, False])
@pytest.mark.parametrize("height, width", [(48, 96), (96, 48), (64, 64)])
def test_patch_coverage_lands_where_clips_transform_puts_the_object(pad_to_square, height, width):
    """A white block drawn into the image ends up in the patches patch_coverage names."""
    mask = np.zeros((height, width), bool)
    mask[height // 2 - 8 : height // 2 + 4, width // 2 : width // 2 + 16] = True
    picture = np.zeros((height, width, 3), np.uint8)
    picture[mask] = 255
    clip = ClipPreprocess(size=64, mean=(0.0, 0.0, 0.0), pad_to_square=pad_to_square)
    white = np.asarray(clip.resize(Image.fromarray(picture)), np.float32)[..., 0] / 255.0
    seen = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(white)[None, None], 8).flatten()

    coverage = patch_coverage(torch.from_numpy(mask), 8, pad_to_square)

    assert coverage.shape == (64,)
    assert set(torch.nonzero(coverage > 0.2).flatten().tolist()) == set(torch.nonzero(seen > 0.2).flatten().tolist())
    torch.testing.assert_close(coverage, seen, atol=0.12, rtol=0)


def test_target_attention_nll_is_minus_log_of_the_head_mean_mass_on_the_target():
    attention = torch.zeros(3, 2, 6, 6)
    # Row 0: query at 5, image tokens at 1..4; head 0 puts 0.6 on patch 2, head 1 puts 0.2 there.
    attention[0, 0, 5] = torch.tensor([0.1, 0.1, 0.6, 0.1, 0.0, 0.1])
    attention[0, 1, 5] = torch.tensor([0.4, 0.1, 0.2, 0.1, 0.1, 0.1])
    # Row 1: the target covers patches 0 and 3 (image positions 1 and 4).
    attention[1, :, 4] = torch.tensor([0.0, 0.3, 0.2, 0.2, 0.3, 0.0])
    attention[2, :, 5] = 1 / 6  # row 2: its target covers no patch, so it is left out
    image_slots = torch.tensor([[False, True, True, True, True, False]] * 3)
    coverage = torch.tensor([[0.0, 0.9, 0.0, 0.01], [0.5, 0.0, 0.0, 0.06], [0.0, 0.0, 0.0, 0.0]])

    nll = target_attention_nll(attention, torch.tensor([5, 4, 5]), image_slots, coverage)

    expected = -(math.log((0.6 + 0.2) / 2) + math.log(0.3 + 0.3)) / 2
    assert float(nll) == pytest.approx(expected, abs=1e-5)
    assert float(target_attention_nll(attention[2:], torch.tensor([5]), image_slots[2:], coverage[2:])) == 0.0


def _attention_mass(model, batch) -> float:
    with torch.no_grad():
        out = model(batch)
    return math.exp(-float(out.losses["box_attention"]))


def test_box_attention_term_teaches_the_spatial_query_to_look_at_the_target():
    torch.manual_seed(0)
    model = build_model(tiny_recipe(attn_implementation="eager"))
    model.loss_weights = LossSpec(bce=0.0, dice=0.0, l1=0.0, ce=0.0, box_attention=1.0)
    batch = PPCRProcessor.from_model(model)(synthetic_samples(), rng=random.Random(0))
    optimizer = torch.optim.AdamW([p for _, p in model.trainable_parameters()], lr=3e-3, weight_decay=0.0)
    before = _attention_mass(model, batch)

    for _ in range(40):
        out = model(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()

    after = _attention_mass(model, batch)
    assert after > 2 * before and after > 0.3, (before, after)


def test_box_attention_is_off_by_default_and_needs_eager_attention():
    model = build_model(tiny_recipe())
    batch = PPCRProcessor.from_model(model)(synthetic_samples(), rng=random.Random(0))
    assert "box_attention" not in model(batch).losses

    model.loss_weights = LossSpec(box_attention=1.0)
    with pytest.raises(PPCRError, match="attention weights") as caught:
        model(batch)
    assert "attn_implementation=eager" in caught.value.hint
