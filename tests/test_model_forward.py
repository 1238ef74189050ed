"""The PPCR forward pass on the tiny model: gradients, LoRA placement, variants, box routing.

Every test builds the tiny model (same classes as the 7B one) from a recipe with random init,
runs it on a few synthetic images, and checks behaviour the design promises (docs/design.md, "Pipeline").
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from ppcr.modeling.build import build_model
from ppcr.modeling.processor import PPCRProcessor, PPCRSample
from tests.tiny_recipes import tiny_recipe


def synthetic_samples(count: int = 4, shared: int = 2) -> list[PPCRSample]:
    """Images of different non-square sizes; ``shared`` consecutive samples use one image."""
    rng = np.random.default_rng(0)
    samples, images = [], {}
    for i in range(count):
        key = i // shared
        if key not in images:
            height, width = 90 + 10 * key, 130 - 8 * key
            images[key] = (rng.random((height, width, 3)) * 255).astype(np.uint8)
        height, width = images[key].shape[:2]
        x1, y1 = 10 + 5 * i, 8 + 3 * i
        mask = np.zeros((height, width), bool)
        mask[y1 : y1 + 30, x1 : x1 + 40] = True
        samples.append(
            PPCRSample(
                image=images[key],
                expression=f"the {['red', 'blue', 'green', 'yellow'][i % 4]} circle on the left",
                mask=mask,
                box_xyxy=(x1, y1, x1 + 40, y1 + 30),
                image_key=key,
            )
        )
    return samples


def randomise_lora_b(model) -> None:
    """LoRA B starts at zero (so A's gradient is exactly zero at step 0); give it values."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.llm.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


@pytest.fixture(scope="module")
def semantic_model():
    return build_model(tiny_recipe(spatial_prompt="semantic"))


@pytest.fixture(scope="module")
def batch(semantic_model):
    return PPCRProcessor.from_model(semantic_model)(synthetic_samples(), rng=random.Random(0))


def test_one_backward_reaches_every_lora_matrix_of_both_adapters(semantic_model, batch):
    model = semantic_model
    randomise_lora_b(model)
    model.zero_grad(set_to_none=True)
    out = model(batch)
    # Switching adapters inside the step must not have switched any gradient flag off.
    lora = {n: p for n, p in model.llm.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    out.loss.backward()
    for adapter in ("semantic", "spatial"):
        params = model.adapters.parameters(adapter)
        assert len(params) == 2 * 2 * model.llava.config.text_config.num_hidden_layers  # A,B × q,v × layers
        for name, parameter in params.items():
            assert parameter.grad is not None, name
            assert parameter.grad.abs().sum() > 0, name
    assert set(out.losses) == {"bce", "dice", "l1", "ce"}
    assert torch.isfinite(out.loss)


def test_lora_only_in_the_language_model(semantic_model):
    lora_modules = [n for n, _ in semantic_model.named_modules() if n.endswith(("lora_A", "lora_B"))]
    assert lora_modules
    for name in lora_modules:
        assert ".language_model.layers." in name, name
        assert name.split(".")[-2] in ("q_proj", "v_proj"), name
    for name, _ in semantic_model.named_modules():
        if "vision_tower" in name or name.startswith("sam.") or "multi_modal_projector" in name:
            assert "lora" not in name, name


def test_frozen_parts_get_no_gradient_and_trainable_parts_do(semantic_model, batch):
    model = semantic_model
    randomise_lora_b(model)
    model.zero_grad(set_to_none=True)
    model(batch).loss.backward()
    frozen = {
        "CLIP": model.llava.model.vision_tower,
        "projector": model.llava.model.multi_modal_projector,
        "SAM image encoder": model.sam.image_encoder,
        "SAM prompt encoder": model.sam.prompt_encoder,
    }
    for what, module in frozen.items():
        for name, parameter in module.named_parameters():
            assert not parameter.requires_grad and parameter.grad is None, f"{what}: {name}"
    for name, parameter in model.language_model.named_parameters():
        if "lora_" not in name:
            assert not parameter.requires_grad and parameter.grad is None, name
    assert not model.llava.lm_head.weight.requires_grad and model.llava.lm_head.weight.grad is None
    for name, module in model.trainable_modules().items():
        # SAM's IoU head and the hypernetworks of masks 2-4 are saved with the mask decoder but
        # frozen: no PPCR loss reads their outputs (single-mask output, as in GLaMM/LISA).
        grads = {n: p.grad for n, p in module.named_parameters() if p.requires_grad}
        assert all(g is not None for g in grads.values()), (name, [n for n, g in grads.items() if g is None])
        assert sum(float(g.abs().sum()) for g in grads.values()) > 0, name
    decoder = model.sam.mask_decoder
    for frozen_part in (decoder.iou_prediction_head, *decoder.output_hypernetworks_mlps[1:]):
        assert not any(p.requires_grad for p in frozen_part.parameters())


def test_unfrozen_encoders_get_gradients_from_the_training_forward(batch):
    """``model.unfreeze`` (the random tiny model) must really train CLIP, the projector and SAM's
    image encoder: the training forward may not encode the images under ``no_grad``."""
    recipe = tiny_recipe(spatial_prompt="semantic", unfreeze=["vision_tower", "projector", "sam_image_encoder"])
    model = build_model(recipe)
    model.zero_grad(set_to_none=True)
    model(batch).loss.backward()
    for what, module in {
        "CLIP": model.llava.model.vision_tower,
        "projector": model.llava.model.multi_modal_projector,
        "SAM image encoder": model.sam.image_encoder,
    }.items():
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads, what
        assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0, what
    # Inference encoding stays graph-free.
    assert not model.encode_images(batch.images).clip_tokens.requires_grad


def test_training_step_changes_added_token_rows_but_not_base_rows(semantic_model, batch):
    model = semantic_model
    embed_before = model.llava.get_input_embeddings().weight.detach().clone()
    head_before = model.llava.lm_head.weight.detach().clone()
    rows_before = model.token_rows.input_rows.detach().clone()
    out_rows_before = model.token_rows.output_rows.detach().clone()
    optimizer = torch.optim.AdamW([p for _, p in model.trainable_parameters()], lr=1e-2)
    optimizer.zero_grad()
    model(batch).loss.backward()
    optimizer.step()
    assert torch.equal(model.llava.get_input_embeddings().weight, embed_before)
    assert torch.equal(model.llava.lm_head.weight, head_before)
    assert not torch.equal(model.token_rows.input_rows, rows_before)
    assert not torch.equal(model.token_rows.output_rows, out_rows_before)
    # The effective embedding of [SEG] is the trained row, not the frozen base row.
    seg = torch.tensor([[model.token_ids.seg]])
    effective = model.token_rows.embed(seg, model.llava.get_input_embeddings())[0, 0]
    assert torch.equal(effective, model.token_rows.input_rows[0])


def test_h_sem_is_the_state_before_seg_and_feeds_sam(semantic_model, batch):
    model = semantic_model.eval()
    captured: dict[str, torch.Tensor] = {}

    def keep_first(module, args, output) -> None:
        captured.setdefault("first", output.last_hidden_state.detach())

    handle = model.language_model.register_forward_hook(keep_first)
    try:
        with torch.no_grad():
            pred = model.segment(model.encode_images(batch.images), batch.text, share_prefix=False)
    finally:
        handle.remove()
    ids = batch.text.semantic.input_ids
    before_seg = (ids == model.token_ids.seg).long().argmax(dim=1) - 1
    expected = captured["first"][torch.arange(ids.shape[0]), before_seg]
    assert torch.equal(pred.h_sem, expected)
    assert torch.allclose(pred.semantic_prompt, model.semantic_proj(pred.h_sem))
    model.train()


def _box_after_semantic_change(variant: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boxes and h_sem before/after perturbing only the semantic adapter (which changes h_sem)."""
    model = build_model(tiny_recipe(spatial_prompt=variant)).eval()
    randomise_lora_b(model)
    batch = PPCRProcessor.from_model(model)(synthetic_samples())
    with torch.no_grad():
        features = model.encode_images(batch.images)
        before = model.segment(features, batch.text, share_prefix=False)
        for parameter in model.adapters.parameters("semantic").values():
            parameter.add_(0.5)
        after = model.segment(features, batch.text, share_prefix=False)
    return before.h_sem, after.h_sem, before.boxes, after.boxes


@pytest.mark.parametrize(
    "variant, box_depends_on_h_sem",
    [("expression", False), ("semantic", True), ("expression+semantic", True)],
)
def test_spatial_variants_condition_the_box_on_h_sem_or_not(variant, box_depends_on_h_sem):
    h_before, h_after, box_before, box_after = _box_after_semantic_change(variant)
    assert not torch.allclose(h_before, h_after)
    assert torch.equal(box_before, box_after) != box_depends_on_h_sem


def test_spatial_prompts_hold_sem_slot_only_for_semantic_variants():
    for variant, has_sem in [("semantic", True), ("expression+semantic", True), ("expression", False)]:
        model = build_model(tiny_recipe(spatial_prompt=variant))
        text = PPCRProcessor.from_model(model).texts(["the red circle"], [0])
        assert bool((text.spatial.input_ids == model.token_ids.sem).any()) == has_sem
        assert (model.sem_to_input is not None) == has_sem
        assert int((text.semantic.input_ids == model.token_ids.sem).sum()) == 0


def test_variant_none_runs_no_spatial_stage():
    model = build_model(tiny_recipe(spatial_prompt="none"))
    assert model.adapters.names == ("semantic",)
    assert model.box_head is None and model.sem_to_input is None
    batch = PPCRProcessor.from_model(model)(synthetic_samples())
    assert batch.text.spatial is None
    calls: list[int] = []
    prompt_calls: list[int] = []

    def count_call(*args) -> None:
        calls.append(1)

    def count_prompt(*args) -> None:
        prompt_calls.append(1)

    handle = model.language_model.register_forward_hook(count_call)
    handle2 = model.sam.prompt_encoder.register_forward_pre_hook(count_prompt)
    try:
        out = model(batch)
    finally:
        handle.remove()
        handle2.remove()
    assert len(calls) == 1  # stage 1 only
    assert prompt_calls == []  # SAM got the semantic token alone, no box
    assert out.boxes is None and out.p_box is None and "l1" not in out.losses
    out.loss.backward()
    assert all(p.grad is not None for p in model.adapters.parameters("semantic").values())


def _prompt_encoder_boxes(model, run) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        seen.append(kwargs["boxes"].detach().clone())

    handle = model.sam.prompt_encoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        result = run()
    finally:
        handle.remove()
    return seen, result


def test_box_source_gt_feeds_the_ground_truth_box_to_sam(semantic_model, batch):
    model = semantic_model.eval()
    with torch.no_grad():
        features = model.encode_images(batch.images)
        seen, pred = _prompt_encoder_boxes(
            model, lambda: model.segment(features, batch.text, box_source="gt", gt_boxes=batch.gt_boxes)
        )
    fed = torch.cat(seen)
    # One prompt-encoder call per image, rows in image order: samples 0,1 → image 0; 2,3 → image 1.
    expected = []
    for sample, image in enumerate(batch.text.image_index.tolist()):
        h, w = batch.images.input_sizes[image]
        x1, y1, x2, y2 = batch.gt_boxes[sample].tolist()
        expected.append([x1 * w, y1 * h, x2 * w, y2 * h])
    assert torch.allclose(fed, torch.tensor(expected), atol=1e-4)
    assert torch.allclose(pred.sam_boxes, torch.tensor(expected), atol=1e-4)
    assert pred.boxes is not None and not torch.allclose(pred.boxes, batch.gt_boxes)  # still predicted
    model.train()


def test_gt_box_rows_teacher_force_only_their_samples_and_keep_the_box_loss(semantic_model, batch):
    model = semantic_model.eval()
    rows = torch.tensor([True, False, False, True])
    with torch.no_grad():
        plain = model(batch)
        mixed = model(batch, gt_box_rows=rows)
        oracle = model(batch, box_source="gt")
    for i, forced in enumerate(rows.tolist()):
        source = oracle if forced else plain
        torch.testing.assert_close(mixed.mask_logits[i], source.mask_logits[i])
    assert not torch.allclose(mixed.mask_logits[0], plain.mask_logits[0])
    torch.testing.assert_close(mixed.boxes, plain.boxes)  # the head's own boxes, for the L1 term
    torch.testing.assert_close(mixed.losses["l1"], plain.losses["l1"])
    model.train()


def test_sam_sparse_prompt_is_box_corners_then_the_semantic_token(semantic_model, batch):
    model = semantic_model.eval()
    sparse: list[torch.Tensor] = []

    def keep(module, args, kwargs) -> None:
        sparse.append(kwargs["sparse_prompt_embeddings"].detach())

    handle = model.sam.mask_decoder.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.no_grad():
            pred = model.segment(model.encode_images(batch.images), batch.text)
    finally:
        handle.remove()
        model.train()
    tokens = torch.cat(sparse)  # one decoder call per image, samples in image order
    assert tokens.shape == (len(batch), 3, model.sam.prompt_encoder.embed_dim)
    assert torch.equal(tokens[:, 2], pred.semantic_prompt)


def test_predicted_box_is_ordered_and_scaled_to_sams_resized_frame(semantic_model, batch):
    model = semantic_model.eval()
    with torch.no_grad():
        features = model.encode_images(batch.images)
        seen, pred = _prompt_encoder_boxes(model, lambda: model.segment(features, batch.text))
    fed = torch.cat(seen)
    for sample, image in enumerate(batch.text.image_index.tolist()):
        h, w = batch.images.input_sizes[image]
        x1, y1, x2, y2 = pred.boxes[sample].tolist()
        expected = torch.tensor([min(x1, x2) * w, min(y1, y2) * h, max(x1, x2) * w, max(y1, y2) * h])
        assert torch.allclose(fed[sample], expected, atol=1e-4)
    assert ((pred.boxes >= 0) & (pred.boxes <= 1)).all()
    model.train()


def test_masks_come_back_at_each_images_original_size(semantic_model, batch):
    with torch.no_grad():
        out = semantic_model(batch)
    for sample, image in enumerate(batch.text.image_index.tolist()):
        assert tuple(out.mask_logits[sample].shape) == batch.images.original_sizes[image]
        assert out.mask_logits[sample].dtype == torch.float32
    assert out.prediction.scores.shape == (len(batch),)
    assert ((out.prediction.scores >= 0) & (out.prediction.scores <= 1)).all()


def test_shared_prefix_inference_matches_the_plain_forward(semantic_model):
    model = semantic_model.eval()
    processor = PPCRProcessor.from_model(model)
    samples = synthetic_samples(count=6, shared=3)
    images = processor.images([samples[0].image, samples[3].image])
    text = processor.texts([s.expression for s in samples], [0, 0, 0, 1, 1, 1])
    with torch.no_grad():
        features = model.encode_images(images)
        shared = model.segment(features, text, share_prefix=True)
        plain = model.segment(features, text, share_prefix=False)
    assert torch.allclose(shared.h_sem, plain.h_sem, atol=1e-5)
    assert torch.allclose(shared.boxes, plain.boxes, atol=1e-5)
    for a, b in zip(shared.mask_logits, plain.mask_logits):
        assert torch.allclose(a, b, atol=1e-4)
    model.train()


def test_segment_of_one_expression_equals_its_row_in_a_batch(semantic_model):
    """Batching and padding do not change a sample's result (right padding, causal attention)."""
    model = semantic_model.eval()
    processor = PPCRProcessor.from_model(model)
    samples = synthetic_samples(count=3, shared=3)
    samples[2].expression = "the second small yellow star from the left next to the big blue square"
    images = processor.images([samples[0].image])
    with torch.no_grad():
        features = model.encode_images(images)
        batched = model.segment(features, processor.texts([s.expression for s in samples], [0, 0, 0]))
        single = model.segment(features, processor.texts([samples[0].expression], [0]))
    assert torch.allclose(batched.boxes[0], single.boxes[0], atol=1e-5)
    assert torch.allclose(batched.mask_logits[0], single.mask_logits[0], atol=1e-4)
    model.train()


def test_attention_box_head_variant_trains():
    model = build_model(tiny_recipe(spatial_head="attn"))
    batch = PPCRProcessor.from_model(model)(synthetic_samples())
    out = model(batch)
    assert out.boxes.shape == (4, 4)
    out.loss.backward()
    grads = [p.grad for p in model.box_head.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_bf16_model_trains_and_keeps_sam_coordinates_in_fp32():
    model = build_model(tiny_recipe(), dtype=torch.bfloat16)
    assert model.semantic_proj[0].weight.dtype == torch.bfloat16
    assert model.sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.dtype == torch.float32
    batch = PPCRProcessor.from_model(model)(synthetic_samples())
    out = model(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.adapters.parameters("semantic").values())
    model.to(torch.float32)  # casting back and forth keeps the matrix in fp32 too
    assert model.sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.dtype == torch.float32


def test_gradient_checkpointing_recomputes_each_stage_through_its_own_adapter():
    """Backward recomputes stage-2 layers after routing went back to ``semantic``; the gradients
    must still equal those of the plain forward."""

    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = build_model(tiny_recipe())
        randomise_lora_b(model)
        if checkpointing:
            model.enable_gradient_checkpointing()
        batch = PPCRProcessor.from_model(model)(synthetic_samples())
        model(batch).loss.backward()
        return {n: p.grad.clone() for n, p in model.trainable_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys()
    assert any("lora_A.spatial" in name for name in plain)
    for name, grad in plain.items():
        assert torch.allclose(grad, checkpointed[name], atol=1e-6, rtol=1e-4), name


def test_building_is_deterministic_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = build_model(tiny_recipe()).state_dict()
    assert torch.equal(torch.rand(3), expected_next)
    second = build_model(tiny_recipe()).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other_seed = build_model(dataclasses.replace(tiny_recipe(), seed=4)).state_dict()
    assert not torch.equal(first["semantic_proj.0.weight"], other_seed["semantic_proj.0.weight"])
