"""The pointer box head and what it needs: CLIP's patch grid on the original image (padded and
cropped, non-square), patch cross-entropy targets, jittered teacher boxes, the question before
the image, and a gradient for every trainable parameter of the tiny model."""

from __future__ import annotations

import math
import random

import pytest
import torch

from ppcr.config.loading import load_recipe
from ppcr.data import templates
from ppcr.modeling.build import build_model
from ppcr.modeling.heads import PointerBoxHead
from ppcr.modeling.patch_grid import PatchGrid
from ppcr.modeling.prefix_cache import prefix_length
from ppcr.modeling.processor import PPCRProcessor
from tests.test_model_forward import randomise_lora_b, synthetic_samples
from tests.tiny_recipes import tiny_recipe


# ------------------------------------------------------------------ the patch grid, by hand


def test_patch_of_a_point_in_a_padded_wide_image():
    # 100 wide, 50 high, padded to a centred 100x100 square (25 rows of padding above), 8x8 patches
    # of 12.5 px. Centre (50, 25) px -> square (50, 50) -> cell (4, 4) -> 4*8+4.
    # (5, 5) px -> square (5, 30) -> column 0, row floor(30/12.5)=2 -> 16.
    # (99, 49) px -> square (99, 74) -> column 7, row 5 -> 47.
    grid = PatchGrid(8, 64, pad_to_square=True)
    points = torch.tensor([[0.5, 0.5], [0.05, 0.1], [0.99, 0.98]])
    assert grid.patch_index(points, [(50, 100)] * 3).tolist() == [36, 16, 47]


def test_patch_of_a_point_in_a_padded_tall_image():
    # 40 wide, 80 high: 20 columns of padding on the left of an 80x80 square, patches of 10 px.
    # (10, 70) px -> square (30, 70) -> column 3, row 7 -> 59.
    grid = PatchGrid(8, 64, pad_to_square=True)
    assert grid.patch_index(torch.tensor([[0.25, 0.875]]), [(80, 40)]).tolist() == [59]


def test_patch_of_a_point_in_a_centre_cropped_image():
    # 200 wide, 100 high, shortest side resized to 64: 128x64, crop columns 32..96; 8-px patches.
    # (50, 50) px -> resized (32, 32) -> crop (0, 32) -> column 0, row 4 -> 32.
    # (20, 50) px -> resized x 12.8, cropped away on the left -> nearest column 0 -> 32.
    # (120, 10) px -> resized (76.8, 6.4) -> crop (44.8, 6.4) -> column 5, row 0 -> 5.
    grid = PatchGrid(8, 64, pad_to_square=False)
    points = torch.tensor([[0.25, 0.5], [0.1, 0.5], [0.6, 0.1]])
    assert grid.patch_index(points, [(100, 200)] * 3).tolist() == [32, 32, 5]


@pytest.mark.parametrize("pad", [True, False])
def test_each_patch_centre_maps_back_to_its_own_patch(pad):
    grid = PatchGrid(8, 64, pad_to_square=pad)
    sizes = [(50, 100), (90, 60)]
    anchors, cell = grid.anchors(sizes)
    assert anchors.shape == (2, 64, 2) and cell.shape == (2, 2)
    for b, size in enumerate(sizes):
        inside = ((anchors[b] >= 0) & (anchors[b] <= 1)).all(dim=1)
        assert inside.sum() >= 32  # padding or cropping removes at most half of the patches here
        index = grid.patch_index(anchors[b][inside], [size] * int(inside.sum()))
        assert index.tolist() == torch.nonzero(inside).flatten().tolist()
    # Padded 100x50: one patch is 1/8 of the square, i.e. 1/8 of the width and 1/4 of the height.
    if pad:
        assert cell[0].tolist() == pytest.approx([1 / 8, 1 / 4])


def test_jittered_boxes_stay_in_the_image_and_in_the_centre_patch():
    grid = PatchGrid(8, 64, pad_to_square=True)
    generator = torch.Generator().manual_seed(0)
    boxes = torch.rand(200, 2) * 0.6
    boxes = torch.cat([boxes, boxes + 0.05 + torch.rand(200, 2) * 0.35], dim=1).clamp(0, 1)
    boxes[0] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # a box filling the image cannot grow out of it
    boxes[1] = torch.tensor([0.0, 0.9, 0.05, 1.0])  # one in a corner
    sizes = [(50, 100), (120, 70)] * 100
    jittered = grid.jitter_boxes(boxes, sizes, 0.3, generator)
    assert ((jittered >= 0) & (jittered <= 1)).all()
    assert (jittered[:, 2:] > jittered[:, :2]).all()
    centre = lambda b: (b[:, :2] + b[:, 2:]) / 2  # noqa: E731
    unclipped = ((jittered > 0) & (jittered < 1)).all(dim=1)
    assert torch.equal(grid.patch_index(centre(jittered)[unclipped], [s for s, u in zip(sizes, unclipped) if u]),
                       grid.patch_index(centre(boxes)[unclipped], [s for s, u in zip(sizes, unclipped) if u]))
    ratio = (jittered[unclipped, 2:] - jittered[unclipped, :2]) / (boxes[unclipped, 2:] - boxes[unclipped, :2])
    assert (ratio >= math.exp(-0.3) - 1e-5).all() and (ratio <= math.exp(0.3) + 1e-5).all()
    assert not torch.allclose(jittered, boxes)
    again = grid.jitter_boxes(boxes, sizes, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(jittered, again)


# ------------------------------------------------------------------ the head


def test_the_box_is_the_score_weighted_mean_of_the_patch_proposals():
    torch.manual_seed(0)
    head = PointerBoxHead(hidden=16, dim=8)
    grid = PatchGrid(4, 32)
    anchors, cell = grid.anchors([(40, 80), (60, 60)])
    p_box, states = torch.randn(2, 16), torch.randn(2, 16, 16)
    boxes, logits = head(p_box, states, anchors, cell)
    assert boxes.shape == (2, 4) and logits.shape == (2, 16)
    raw = head.proposal(states)
    centre = anchors + torch.tanh(raw[..., :2]) * cell.unsqueeze(1)
    half = raw[..., 2:].sigmoid() / 2
    proposals = torch.cat([centre - half, centre + half], dim=-1).clamp(0, 1)
    expected = (logits.softmax(-1).unsqueeze(-1) * proposals).sum(1)
    assert torch.allclose(boxes, expected, atol=1e-6)
    # A decisive score picks that patch's proposal, which lies around the patch.
    with torch.no_grad():
        head.query.weight.zero_()
        head.query.bias.zero_()
        head.key.weight.zero_()
        head.key.bias.zero_()
        head.query.bias[0] = 100.0
        head.key.bias[0] = 1.0
        states_picked = states.clone()
        head.key.weight[0, 0] = 1.0
        states_picked[:, :, 0] = -10.0
        states_picked[:, 5, 0] = 10.0
    boxes, logits = head(p_box, states_picked, anchors, cell)
    assert logits.argmax(-1).tolist() == [5, 5]
    box_centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert ((box_centre - anchors[:, 5]).abs() <= cell + 1e-6).all()


def test_pointer_model_targets_the_patch_of_the_box_centre():
    recipe = tiny_recipe(spatial_head="pointer", prompt_order="question_first")
    recipe.loss.patch_ce = 1.0
    model = build_model(recipe)
    samples = synthetic_samples()  # non-square images: 130x90 and 122x100 (w x h)
    batch = PPCRProcessor.from_model(model)(samples, rng=random.Random(0))
    features = model.encode_images(batch.images)
    target = model.target_patches(batch.gt_boxes, batch.text.image_index, features)
    # Sample 0: box (10, 8)-(50, 38) in a 130x90 image -> centre (30, 23); padded to 130x130
    # with 20 rows above -> (30, 43); 8x8 patches of 16.25 px -> column 1, row 2 -> 17.
    assert int(target[0]) == 17
    out = model(batch)
    assert out.prediction.patch_logits.shape == (4, model.image_seq_length)
    assert set(out.losses) == {"bce", "dice", "l1", "ce", "patch_ce"}
    expected = torch.nn.functional.cross_entropy(out.prediction.patch_logits, target)
    assert torch.allclose(out.losses["patch_ce"], expected)
    acc = (out.prediction.patch_logits.argmax(-1) == target).float().mean()
    assert torch.allclose(out.metrics["patch_acc"], acc)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.box_head.parameters())


def test_patch_ce_teaches_the_pointer_where_the_target_is():
    """A few steps of patch CE alone raise the score of the target patch (the head learns)."""
    recipe = tiny_recipe(spatial_head="pointer", prompt_order="question_first")
    recipe.loss = type(recipe.loss)(bce=0, dice=0, l1=0, ce=0, patch_ce=1.0)
    model = build_model(recipe)
    batch = PPCRProcessor.from_model(model)(synthetic_samples(), rng=random.Random(0))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(15):
        optimizer.zero_grad()
        out = model(batch)
        first = float(out.losses["patch_ce"].detach()) if first is None else first
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert float(model(batch).losses["patch_ce"]) < 0.5 * first


# ------------------------------------------------------------------ the question before the image


def test_question_first_prompts_put_the_image_after_the_question():
    assert templates.llava_prompt("Where?", "[BOX].", image_first=False) == "USER: Where?\n<image> ASSISTANT: [BOX]."
    assert templates.llava_prompt("Where?") == "USER: <image>\nWhere? ASSISTANT:"


@pytest.mark.parametrize("variant", ["semantic", "expression"])
def test_question_first_grouped_inference_equals_the_plain_forward(variant):
    """The <sem> slot before the image differs per row: no shared prefix may cover it."""
    model = build_model(tiny_recipe(spatial_head="pointer", prompt_order="question_first", spatial_prompt=variant))
    model.eval()
    processor = PPCRProcessor.from_model(model)
    samples = synthetic_samples(count=6, shared=3)
    images = processor.images([samples[0].image, samples[3].image])
    text = processor.texts([s.expression for s in samples], [0, 0, 0, 1, 1, 1])
    ids = text.spatial.input_ids[0].tolist()
    assert "Where is the target" in model.tokenizer.decode(ids[: ids.index(model.token_ids.image)])
    with torch.no_grad():
        features = model.encode_images(images)
        shared = model.segment(features, text, share_prefix=True)
        plain = model.segment(features, text, share_prefix=False)
        one = model.segment(features, processor.texts([samples[4].expression], [1]), share_prefix=True)
    assert torch.allclose(shared.boxes, plain.boxes, atol=1e-5)
    assert torch.allclose(shared.patch_logits, plain.patch_logits, atol=1e-4)
    assert torch.allclose(one.boxes[0], plain.boxes[4], atol=1e-5)
    for a, b in zip(shared.mask_logits, plain.mask_logits):
        assert torch.allclose(a, b, atol=1e-4)


def test_sem_before_the_image_disables_the_shared_prefix():
    model = build_model(tiny_recipe(prompt_order="question_first"))
    text = PPCRProcessor.from_model(model).texts(["red circle", "blue square"], [0, 0])
    assert prefix_length(text.spatial.input_ids, model.token_ids) is None
    image_first = build_model(tiny_recipe())
    text = PPCRProcessor.from_model(image_first).texts(["red circle", "blue square"], [0, 0])
    assert prefix_length(text.spatial.input_ids, image_first.token_ids) is not None


# ------------------------------------------------------------------ every trainable parameter learns


@pytest.mark.parametrize("overrides", [[], ["spatial-head=pointer", "model.prompt_order=question_first", "loss.patch_ce=1"]])
def test_every_trainable_parameter_of_the_shapes_model_gets_a_gradient(overrides):
    """The shapes recipe trains its whole random base; nothing it marks trainable may be dead
    (a 2-layer CLIP read at layer -2 left its last layer untrained)."""
    model = build_model(load_recipe("shapes", overrides))
    assert model.llava.config.vision_feature_layer == -1
    randomise_lora_b(model)
    batch = PPCRProcessor.from_model(model)(synthetic_samples(), rng=random.Random(0))
    model.zero_grad(set_to_none=True)
    model(batch, gt_box_rows=torch.tensor([True, False, True, False])).loss.backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert dead == []
    tower = model.llava.model.vision_tower
    assert all(p.requires_grad for p in tower.encoder.layers[-1].parameters())
    assert not any(p.requires_grad for p in tower.post_layernorm.parameters())
