"""What the PPCR model returns: image encodings, predictions and the training output.

Plain dataclasses of tensors, apart from the model so that the parts that produce them (SAM
prompting, the objective) and the callers that read them need not import the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

@dataclass
class ImageFeatures:
    """Per-image encodings, computed once: CLIP tokens after the projector (N×n×d, the LLM's
    ``<image>`` embeddings) and SAM image embeddings (N×C×h×w), plus the sizes SAM needs."""

    clip_tokens: torch.Tensor
    sam_embeddings: torch.Tensor
    input_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.original_sizes)


@dataclass
class PPCRPrediction:
    """What the three stages produce for B expressions.

    ``mask_logits``: one float32 H×W tensor per sample (its image's original size);
    ``boxes``: B×4 normalised xyxy from the box head (None for ``spatial_prompt=none``);
    ``sam_boxes``: B×4 boxes actually given to SAM, in its resized-input frame (None if no box);
    ``patch_logits``: B×P scores over CLIP's patches (``spatial_head: pointer`` only);
    ``h_sem``/``p_box``: the LLM hidden states (P_txt^seg, P_box^seg); ``semantic_prompt``: the
    SAM token made from h_sem; ``iou_predictions``: SAM's own quality head for the mask (its
    pretrained estimate; not trained by PPCR's losses); ``scores``: the confidence we report, the
    mean foreground probability inside the predicted mask (0 for an empty mask).
    """

    mask_logits: list[torch.Tensor]
    boxes: Optional[torch.Tensor]
    sam_boxes: Optional[torch.Tensor]
    h_sem: torch.Tensor
    p_box: Optional[torch.Tensor]
    semantic_prompt: torch.Tensor
    iou_predictions: torch.Tensor
    scores: torch.Tensor
    ce_sum: Optional[torch.Tensor] = None
    ce_count: int = 0
    patch_logits: Optional[torch.Tensor] = None

    @property
    def masks(self) -> list[torch.Tensor]:
        return [logits > 0 for logits in self.mask_logits]


@dataclass
class PPCROutput:
    """Training forward result: the weighted loss, its unweighted terms, metrics that are not
    optimised (``patch_acc``: top-1 patch accuracy of the pointer head) and the predictions."""

    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    mask_logits: list[torch.Tensor]
    boxes: Optional[torch.Tensor]
    h_sem: torch.Tensor
    p_box: Optional[torch.Tensor]
    prediction: PPCRPrediction = field(repr=False)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
