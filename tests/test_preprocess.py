"""CLIP and SAM preprocessing: shapes, exact pixel values, box mapping, mask post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ppcr.data.preprocess import CLIP_MEAN, CLIP_STD, ClipPreprocess, SamTransform, expand_to_square


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    data = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(data, "RGB")


def _unnormalise(tensor: torch.Tensor, mean, std, scale: float) -> np.ndarray:
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    return ((tensor * std_t + mean_t) * scale).permute(1, 2, 0).numpy()


def test_clip_pad_to_square_matches_manual_pipeline():
    image = _image(30, 20)
    clip = ClipPreprocess(size=16)
    out = clip(image)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    fill = (122, 116, 104)  # int(mean * 255) of CLIP's mean
    assert clip.fill == fill
    square = Image.new("RGB", (30, 30), fill)
    square.paste(image, (0, 5))
    expected = np.asarray(square.resize((16, 16), Image.BICUBIC), dtype=np.float64)
    assert np.allclose(_unnormalise(out, CLIP_MEAN, CLIP_STD, 255.0), expected, atol=1e-3)


def test_expand_to_square_centres_and_fills():
    tall = Image.new("RGB", (3, 6), (255, 0, 0))
    square = np.asarray(expand_to_square(tall, (0, 0, 255)))
    assert square.shape == (6, 6, 3)
    assert square[:, 1:4].tolist() == [[[255, 0, 0]] * 3] * 6  # pasted at x = (6 - 3) // 2 = 1
    assert square[:, 0].tolist() == [[0, 0, 255]] * 6 and square[:, 4:].tolist() == [[[0, 0, 255]] * 2] * 6
    same = Image.new("RGB", (4, 4))
    assert expand_to_square(same, (0, 0, 0)) is same


def test_clip_shortest_side_resize_and_centre_crop():
    image = _image(25, 10)
    clip = ClipPreprocess(size=8, pad_to_square=False)
    out = clip(image)
    assert out.shape == (3, 8, 8)
    resized = image.resize((int(8 * 25 / 10), 8), Image.BICUBIC)  # (20, 8)
    expected = np.asarray(resized, dtype=np.float64)[:, 6:14]  # left = (20 - 8) // 2
    assert np.allclose(_unnormalise(out, CLIP_MEAN, CLIP_STD, 255.0), expected, atol=1e-3)


def test_clip_normalisation_values():
    white = Image.new("RGB", (4, 4), (255, 255, 255))
    out = ClipPreprocess(size=4)(white)
    for channel in range(3):
        assert torch.allclose(out[channel], torch.full((4, 4), (1 - CLIP_MEAN[channel]) / CLIP_STD[channel]))
    custom = ClipPreprocess(size=2, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(Image.new("RGB", (2, 2)))
    assert torch.allclose(custom, torch.full((3, 2, 2), -1.0))


def test_sam_preprocess_shape_rounding_matches_sam():
    sam = SamTransform(1024)
    assert sam.get_preprocess_shape(480, 640) == (768, 1024)
    assert sam.get_preprocess_shape(427, 640) == (683, 1024)  # 682.4 + 0.5 → 683 (SAM's int(x + 0.5))
    assert sam.get_preprocess_shape(640, 427) == (1024, 683)
    assert sam.get_preprocess_shape(333, 1000) == (341, 1024)  # 340.99 → 341
    assert sam.get_preprocess_shape(2048, 2048) == (1024, 1024)


def test_sam_apply_image_values_and_zero_padding():
    image = _image(30, 20)
    sam = SamTransform(target_length=32)
    tensor, input_size = sam.apply_image(image)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    assert input_size == (21, 32)  # 20 * 32 / 30 = 21.33 → 21
    assert torch.count_nonzero(tensor[:, 21:, :]) == 0  # bottom padding is exactly 0
    resized = np.asarray(image.resize((32, 21), Image.BILINEAR), dtype=np.float64)
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    restored = _unnormalise(tensor[:, :21, :32], mean, std, 1.0)
    assert np.allclose(restored, resized, atol=1e-3)

    tall_tensor, tall_size = sam.apply_image(np.asarray(_image(10, 40)))
    assert tall_size == (32, 8) and torch.count_nonzero(tall_tensor[:, :, 8:]) == 0


def test_sam_box_and_coordinate_transform():
    sam = SamTransform(1024)
    boxes = np.array([[64.0, 48.0, 320.0, 240.0]])  # in a 640×480 image
    assert np.allclose(sam.apply_boxes(boxes, (480, 640)), [[102.4, 76.8, 512.0, 384.0]])
    coords = torch.tensor([[[640.0, 480.0]]], requires_grad=True)
    mapped = sam.apply_coords(coords, (480, 640))
    assert torch.allclose(mapped, torch.tensor([[[1024.0, 768.0]]]))
    mapped.sum().backward()
    assert coords.grad is not None
    # non-uniform rounding: 427 → 683 rows, 640 → 1024 cols
    assert np.allclose(sam.apply_coords(np.array([427.0, 427.0]), (427, 640)), [427 * 1024 / 640, 683.0])
    torch_boxes = sam.apply_boxes(torch.tensor([[64.0, 48.0, 320.0, 240.0]]), (480, 640))
    assert torch.allclose(torch_boxes, torch.tensor([[102.4, 76.8, 512.0, 384.0]]))


def test_boxes_from_normalized_orders_and_scales_by_resized_size():
    boxes = torch.tensor([[0.5, 0.75, 0.25, 0.25]], requires_grad=True)
    out = SamTransform.boxes_from_normalized(boxes, (768, 1024))
    assert torch.allclose(out, torch.tensor([[256.0, 192.0, 512.0, 576.0]]))
    out.sum().backward()
    assert boxes.grad is not None
    whole = SamTransform.boxes_from_normalized(np.array([0.0, 0.0, 1.0, 1.0]), (683, 1024))
    assert np.allclose(whole, [0, 0, 1024, 683])


def test_postprocess_masks_crops_padding():
    sam = SamTransform(target_length=64)
    original = (30, 60)
    input_size = sam.get_preprocess_shape(*original)
    assert input_size == (32, 64)
    # Low-res logits (1/4 of 64): positive where the image is (top 8 rows), strongly negative in
    # the padding (bottom 8 rows). Without the crop, the negative padding would be stretched
    # into the lower half of the output.
    low = torch.full((1, 1, 16, 16), -10.0)
    low[..., :8, :] = 10.0
    out = sam.postprocess_masks(low, input_size, original)
    assert out.shape == (1, 1, 30, 60) and out.dtype == torch.float32
    assert bool((out > 0).all())
    # a left/right split survives at the original resolution
    split = torch.full((2, 1, 16, 16), -10.0)
    split[..., :, :8] = 10.0
    mask = sam.postprocess_masks(split, input_size, original)[0, 0] > 0
    assert bool(mask[:, :29].all()) and not bool(mask[:, 31:].any())


def test_postprocess_matches_reference_formula_and_rejects_bad_rank():
    sam = SamTransform(target_length=32)
    low = torch.randn(2, 1, 8, 8)
    out = sam.postprocess_masks(low.to(torch.bfloat16), (20, 32), (40, 64))
    interpolate = torch.nn.functional.interpolate
    up = interpolate(low.to(torch.bfloat16).float(), (32, 32), mode="bilinear", align_corners=False)
    ref = interpolate(up[..., :20, :32], (40, 64), mode="bilinear", align_corners=False)
    assert out.dtype == torch.float32 and torch.allclose(out, ref)
    with pytest.raises(ValueError):
        sam.postprocess_masks(torch.zeros(8, 8), (8, 8), (8, 8))


@pytest.mark.parametrize("pad_to_square", [True, False])
def test_clip_matches_transformers_pil_processors(pad_to_square):
    """Same pixels as llava-hf's processor (do_pad=True) and CLIPImageProcessor's defaults."""
    if pad_to_square:
        module = pytest.importorskip("transformers.models.llava.image_processing_pil_llava")
        reference = module.LlavaImageProcessorPil(
            do_pad=True, size={"shortest_edge": 12}, crop_size={"height": 12, "width": 12}
        )
    else:
        module = pytest.importorskip("transformers.models.clip.image_processing_pil_clip")
        reference = module.CLIPImageProcessorPil(
            size={"shortest_edge": 12}, crop_size={"height": 12, "width": 12}
        )
    for width, height in ((31, 17), (17, 31), (20, 20)):
        image = _image(width, height, seed=width)
        expected = np.asarray(reference(image, return_tensors="np")["pixel_values"][0])
        mine = ClipPreprocess(size=12, pad_to_square=pad_to_square)(image).numpy()
        assert np.allclose(mine, expected, atol=1e-5), (width, height)
