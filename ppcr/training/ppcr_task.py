"""What ``ppcr train`` trains: the PPCR task of the engine, and the PPCR train step.

The engine (:func:`ppcr.training.run.train`) trains :data:`PPCR_TASK` unless given other
factories:

- the dataset yields one sentence per item (docs/design.md, "Data"), over all
  ``recipe.data.datasets``, with its mask decoded and its image loaded in DataLoader workers;
- the model is :class:`PPCRTrainModule`, whose forward is one training step on those raw items
  (templates, teacher forcing, the three stages and the loss), read top to bottom.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ppcr.config.schema import Recipe
from ppcr.data.refer import ReferDataset
from ppcr.evaluation.data import check_images_present
from ppcr.training.request import TrainTask


@dataclass
class TrainItem:
    """One training sentence: what the processor needs plus the key of its template stream."""

    image: Any
    expression: str
    mask: np.ndarray
    box_xyxy: tuple[float, float, float, float]
    image_key: tuple[str, int]
    template_seed: str


class ReferTrainDataset(torch.utils.data.Dataset):
    """The concatenation of ``recipe.data.datasets``' training splits, one item per sentence."""

    def __init__(self, recipe: Recipe):
        data = recipe.data
        self.seed = recipe.seed
        self.epoch = 0
        self.parts = [
            ReferDataset(name, data.root, data.train_split, images=data.images) for name in data.datasets
        ]
        # As evaluation does: a missing image fails here, before the model is built or the run
        # directory written, not when a DataLoader worker reaches it hours later.
        for part in self.parts:
            check_images_present(part)
        self.offsets = [0]
        for part in self.parts:
            self.offsets.append(self.offsets[-1] + len(part))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def image_groups(self) -> list[list[int]]:
        """Sample indices grouped by image file (the RefCOCO family, like Shapes-Ref, shares images)."""
        groups: dict[Path, list[int]] = {}
        for offset, part in zip(self.offsets, self.parts):
            for position, sample in enumerate(part):
                groups.setdefault(sample.image_path, []).append(offset + position)
        return list(groups.values())

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> TrainItem:
        if not 0 <= index < len(self):
            raise IndexError(index)
        part_index = bisect.bisect_right(self.offsets, index) - 1
        part = self.parts[part_index]
        sample = part[index - self.offsets[part_index]]
        from ppcr.images import load_image

        return TrainItem(
            image=load_image(sample.image_path),
            expression=sample.text,
            mask=part.mask(sample),
            box_xyxy=sample.box_xyxy,
            image_key=str(sample.image_path),  # one image file is encoded once per batch
            template_seed=f"{self.seed}:{self.epoch}:{index}",
        )


def collate_items(items: list[TrainItem]) -> list[TrainItem]:
    """Items stay as they are; the model's processor batches them (it owns the tokenizer)."""
    return list(items)


class PPCRTrainModule(nn.Module):
    """The PPCR model plus its processor, taking raw :class:`TrainItem` lists: the train step.

    ``save_pretrained`` writes a plain PPCR checkpoint directory (``PPCRModel.from_pretrained``
    reads it directly); ``state_dict=`` carries the consolidated fp32 master weights.
    """

    def __init__(self, model: nn.Module, recipe: Recipe):
        super().__init__()
        from ppcr.modeling.processor import PPCRProcessor

        self.model = model
        self.recipe = recipe
        self.processor = PPCRProcessor.from_model(model)

    def forward(self, items: list[TrainItem]):
        """One training step's forward (the engine adds backward and the optimizer step).

        1. Templates: every random choice of the step draws from one stream seeded by the items'
           ``template_seed`` (seed, epoch, sample index), so a resumed run replays the prompts
           an uninterrupted one would have seen. The processor samples each item's semantic and
           spatial templates from it and tokenises (it owns the tokenizer and image transforms).
        2. Teacher forcing (``train.gt_box_rate``, training only): each item's SAM gets, with that
           probability, the ground-truth box instead of the predicted one, jittered as a pointer
           that found the right CLIP patch would give it (``train.gt_box_jitter``); the box head
           is still trained on its own prediction.
        3. The three stages and the weighted loss: :meth:`PPCRModel.forward
           <ppcr.modeling.model.PPCRModel.forward>` (terms in :func:`ppcr.modeling.losses.objective`).
        """
        from ppcr.modeling.processor import PPCRSample

        samples = [
            PPCRSample(image=i.image, expression=i.expression, mask=i.mask, box_xyxy=i.box_xyxy, image_key=i.image_key)
            for i in items
        ]
        rng = random.Random("|".join(i.template_seed for i in items))
        batch = self.processor(samples, rng=rng)  # 1. templates
        gt_box_rows = teacher_boxes = None
        if self.training and self.recipe.train.gt_box_rate > 0:  # 2. teacher forcing
            gt_box_rows = torch.tensor([rng.random() < self.recipe.train.gt_box_rate for _ in items])
            teacher_boxes = self._jittered_boxes(batch, rng)
        device = next(self.model.parameters()).device
        return self.model(batch.to(device), gt_box_rows=gt_box_rows, teacher_boxes=teacher_boxes)  # 3.

    def _jittered_boxes(self, batch, rng: random.Random) -> Optional[torch.Tensor]:
        """Teacher-forced boxes as a pointer that found the right CLIP patch would give them
        (``train.gt_box_jitter``); None keeps the exact boxes."""
        jitter = self.recipe.train.gt_box_jitter
        if jitter <= 0 or batch.gt_boxes is None:
            return None
        grid = self.model.clip_patch_grid()
        sizes = [batch.images.original_sizes[i] for i in batch.text.image_index.tolist()]
        generator = torch.Generator().manual_seed(rng.getrandbits(63))
        return grid.jitter_boxes(batch.gt_boxes, sizes, jitter, generator)

    def is_mllm_parameter(self, name: str) -> bool:
        """LLaVA's parameters (LoRA adapters and any unfrozen base) and the added token rows."""
        return name.startswith(("model.llm.", "model.token_rows."))

    def save_pretrained(self, directory: str | Path, state_dict: Optional[dict[str, torch.Tensor]] = None) -> Path:
        from ppcr.config.loading import recipe_to_dict

        inner = None
        if state_dict is not None:
            inner = {k[len("model.") :]: v for k, v in state_dict.items() if k.startswith("model.")}
        return self.model.save_pretrained(directory, state_dict=inner, recipe=recipe_to_dict(self.recipe))


def build_train_dataset(recipe: Recipe) -> ReferTrainDataset:
    return ReferTrainDataset(recipe)


def build_train_model(recipe: Recipe) -> PPCRTrainModule:
    from ppcr.modeling.build import build_model

    return PPCRTrainModule(build_model(recipe), recipe)


# What the engine trains by default (RunRequest.resolved_task).
PPCR_TASK = TrainTask(build_model=build_train_model, build_dataset=build_train_dataset, collate=collate_items)
