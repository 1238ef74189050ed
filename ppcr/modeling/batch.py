"""The tensors that go into :class:`~ppcr.modeling.model.PPCRModel`, as typed containers.

Images and texts are separate on purpose: an image is encoded once (:class:`ImageInputs`) and
any number of expressions (:class:`TextInputs`) point at it through ``image_index``. A training
batch (:class:`PPCRBatch`) is the two plus the ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch


@dataclass
class StageInputs:
    """One stage's LLaVA conversations, right-padded; ``<image>`` already expanded.

    ``labels`` is ``input_ids`` with everything but the assistant answer (and its EOS) set to
    -100; ``attention_mask`` is 1 on real tokens.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str) -> "StageInputs":
        return StageInputs(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels)))


@dataclass
class ImageInputs:
    """Both vision branches' inputs for N distinct images.

    ``clip_pixels``: N×3×S×S (CLIP-normalised); ``sam_pixels``: N×3×L×L (SAM-normalised, resized
    long side L, zero-padded bottom/right); ``input_sizes``: the resized unpadded (h', w') per
    image; ``original_sizes``: (H, W) per image.
    """

    clip_pixels: torch.Tensor
    sam_pixels: torch.Tensor
    input_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.original_sizes)

    def to(self, device: torch.device | str) -> "ImageInputs":
        return replace(self, clip_pixels=self.clip_pixels.to(device), sam_pixels=self.sam_pixels.to(device))


@dataclass
class TextInputs:
    """B expressions: the semantic-stage and (unless ``spatial_prompt=none``) spatial-stage prompts.

    ``image_index[b]`` is the index (into the accompanying images) of sample b's image.
    """

    semantic: StageInputs
    spatial: Optional[StageInputs]
    image_index: torch.Tensor
    expressions: list[str]

    def __len__(self) -> int:
        return len(self.expressions)

    def to(self, device: torch.device | str) -> "TextInputs":
        return replace(
            self,
            semantic=self.semantic.to(device),
            spatial=None if self.spatial is None else self.spatial.to(device),
            image_index=self.image_index.to(device),
        )


@dataclass
class PPCRBatch:
    """A training / evaluation batch: images, texts and (optionally) the ground truth.

    ``gt_masks``: one H×W float {0, 1} tensor per sample (at its image's original size);
    ``gt_boxes``: B×4 normalised xyxy relative to the original image.
    """

    images: ImageInputs
    text: TextInputs
    gt_masks: Optional[list[torch.Tensor]] = None
    gt_boxes: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self.text)

    def to(self, device: torch.device | str) -> "PPCRBatch":
        return PPCRBatch(
            images=self.images.to(device),
            text=self.text.to(device),
            gt_masks=None if self.gt_masks is None else [m.to(device) for m in self.gt_masks],
            gt_boxes=None if self.gt_boxes is None else self.gt_boxes.to(device),
        )
