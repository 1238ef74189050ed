"""Image preprocessing for the two vision branches, in torch + PIL only (no torchvision).

- ``ClipPreprocess``: what LLaVA-1.5 feeds CLIP ViT-L/14-336.
- ``SamTransform``: what SAM's image encoder expects, plus the box/coordinate mapping into SAM's
  frame and the mask post-processing back to the original image.

Both accept anything ``ppcr.images.load_image`` accepts (path, PIL image, uint8 H×W×3 array), so
every caller sees the same RGB pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ppcr.images import ImageSource, load_image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = 336
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
SAM_SIZE = 1024


def expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Pad ``image`` to a centred square with colour ``fill`` (original LLaVA's ``expand2square``).

    The image is pasted at ``((side - w) // 2, (side - h) // 2)``, so an odd margin puts the
    extra pixel on the right / bottom.
    """
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), fill)
    square.paste(image, square_offsets(height, width))
    return square


def square_offsets(height: int, width: int) -> tuple[int, int]:
    """Where :func:`expand_to_square` pastes an image of this size: (left, top) in the square."""
    side = max(width, height)
    return (side - width) // 2, (side - height) // 2


def resize_and_crop(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """The centre-crop geometry of :meth:`ClipPreprocess.resize` without padding:
    ``(new_w, new_h, left, top)``, the shorter side resized to ``size``, then a centred
    ``size×size`` crop from ``(left, top)``. One place, so the pointer head's patch targets
    (ppcr.modeling.patch_grid) see exactly the pixels CLIP sees."""
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    return new_w, new_h, (new_w - size) // 2, (new_h - size) // 2


class ClipPreprocess:
    """Image → normalised ``3×size×size`` float32 tensor for the CLIP vision tower.

    ``pad_to_square=True`` (LLaVA-1.5's "pad" aspect mode, which llava-hf reproduces with
    ``do_pad=True``): pad to a square with the mean colour (``int(m * 255)`` per channel),
    bicubic-resize to ``size×size``. ``pad_to_square=False`` (``CLIPImageProcessor``'s default,
    used by GLaMM): bicubic-resize the shortest side to ``size`` (long side ``int(size * long /
    short)``), centre-crop ``size×size`` (offset ``(new - size) // 2``). Then scale to [0, 1] and
    normalise with ``mean``/``std``.
    """

    def __init__(
        self,
        size: int = CLIP_SIZE,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        pad_to_square: bool = True,
    ):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        self.size = int(size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.pad_to_square = pad_to_square
        self.fill = tuple(int(m * 255) for m in self.mean)

    def resize(self, image: ImageSource) -> Image.Image:
        """The geometric part only: the RGB ``size×size`` PIL image that gets normalised."""
        rgb = load_image(image)
        if self.pad_to_square:
            return expand_to_square(rgb, self.fill).resize((self.size, self.size), Image.BICUBIC)
        width, height = rgb.size
        new_w, new_h, left, top = resize_and_crop(height, width, self.size)
        resized = rgb.resize((new_w, new_h), Image.BICUBIC)
        return resized.crop((left, top, left + self.size, top + self.size))

    def __call__(self, image: ImageSource) -> torch.Tensor:
        pixels = torch.from_numpy(np.asarray(self.resize(image), dtype=np.float32) / 255.0)
        pixels = pixels.permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return ((pixels - mean) / std).contiguous()


class SamTransform:
    """SAM's ``ResizeLongestSide`` + ``Sam.preprocess`` + ``Sam.postprocess_masks``.

    The one difference from segment-anything: its ``apply_image`` resizes through torchvision's
    ``resize(to_pil_image(x), size)``, which for a PIL image is PIL's bilinear ``Image.resize``;
    here PIL is called directly (the same operation, without the torchvision dependency).
    """

    def __init__(
        self,
        target_length: int = SAM_SIZE,
        pixel_mean: Sequence[float] = SAM_PIXEL_MEAN,
        pixel_std: Sequence[float] = SAM_PIXEL_STD,
    ):
        if target_length <= 0:
            raise ValueError(f"target_length must be positive, got {target_length}")
        self.target_length = int(target_length)
        self.pixel_mean = torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1)
        self.pixel_std = torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1)

    def get_preprocess_shape(self, height: int, width: int) -> tuple[int, int]:
        """(h', w') with the long side equal to ``target_length``, rounded as SAM does."""
        scale = self.target_length * 1.0 / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def apply_image(self, image: ImageSource) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image → (``3×L×L`` normalised tensor zero-padded bottom/right, resized size (h', w')).

        Normalisation happens before padding, so the padding is exactly 0 as in SAM.
        """
        rgb = load_image(image)
        new_h, new_w = self.get_preprocess_shape(rgb.height, rgb.width)
        resized = rgb.resize((new_w, new_h), Image.BILINEAR)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32)).permute(2, 0, 1)
        pixels = (pixels - self.pixel_mean) / self.pixel_std
        padded = F.pad(pixels, (0, self.target_length - new_w, 0, self.target_length - new_h))
        return padded.contiguous(), (new_h, new_w)

    def apply_coords(self, coords, original_size: tuple[int, int]):
        """Scale ``(..., 2)`` x,y pixel coordinates of the original image into SAM's resized frame.

        Returns float64 numpy for numpy input, float32 torch (differentiable) for torch input.
        """
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w)
        scale_xy = (new_w / old_w, new_h / old_h)
        if isinstance(coords, torch.Tensor):
            coords = coords.to(torch.float32)
            return coords * torch.tensor(scale_xy, dtype=coords.dtype, device=coords.device)
        return np.asarray(coords, dtype=np.float64) * np.asarray(scale_xy)

    def apply_boxes(self, boxes, original_size: tuple[int, int]):
        """Scale ``(..., 4)`` xyxy pixel boxes of the original image into SAM's resized frame."""
        shape = tuple(boxes.shape)
        return self.apply_coords(boxes.reshape(-1, 2, 2), original_size).reshape(shape)

    @staticmethod
    def boxes_from_normalized(boxes, input_size: tuple[int, int]):
        """Normalised ``(..., 4)`` boxes in [0, 1] (relative to the original image) → SAM frame.

        Corners are first ordered (x1 ≤ x2, y1 ≤ y2), then scaled by the resized, unpadded size
        (w', h'), not by ``target_length``: the box is relative to the image, not to the padded
        square. Works on numpy arrays and (differentiably) on torch tensors.
        """
        new_h, new_w = input_size
        if isinstance(boxes, torch.Tensor):
            low, high, stack = torch.minimum, torch.maximum, torch.stack
        else:
            boxes = np.asarray(boxes, dtype=np.float64)
            low, high, stack = np.minimum, np.maximum, np.stack
        x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
        corners = (low(x1, x2) * new_w, low(y1, y2) * new_h, high(x1, x2) * new_w, high(y1, y2) * new_h)
        return stack(corners, -1)

    def postprocess_masks(
        self,
        low_res_logits: torch.Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> torch.Tensor:
        """Decoder logits ``(B, C, h, w)`` → float32 logits ``(B, C, H, W)`` on the original image.

        Bilinear (``align_corners=False``) to ``L×L``, crop the padding to ``input_size``,
        bilinear to ``original_size``. Threshold the result at 0 for a mask.
        """
        if low_res_logits.dim() != 4:
            raise ValueError(f"expected (B, C, h, w) logits, got shape {tuple(low_res_logits.shape)}")
        size = (self.target_length, self.target_length)
        masks = F.interpolate(low_res_logits.float(), size, mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)
