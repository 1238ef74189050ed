"""Stage 3: prompting SAM with the box and the semantic token, and the reported confidence.

SAM's frozen prompt encoder takes the box as two corner tokens (corners ordered and scaled into
SAM's resized frame); the semantic prompt follows them as one extra sparse token. Without a box
(``spatial_prompt: none``) the semantic token is the only sparse prompt and the dense prompt is
SAM's "no mask" embedding. The trainable mask decoder gives one mask (single-mask output), whose
logits are brought back to the original H×W.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from ppcr.data.preprocess import SamTransform
from ppcr.modeling.outputs import ImageFeatures

if TYPE_CHECKING:  # pragma: no cover
    from segment_anything.modeling import Sam


def sam_masks(
    sam: "Sam",
    transform: SamTransform,
    features: ImageFeatures,
    image_index: torch.Tensor,
    semantic_prompt: torch.Tensor,
    boxes: Optional[torch.Tensor],
) -> tuple[list[torch.Tensor], torch.Tensor, Optional[torch.Tensor]]:
    """Per image: prompt encoder (box corners + semantic token) → mask decoder → original size.

    Returns each sample's mask logits, SAM's IoU estimate and the boxes given to SAM in its
    resized-input frame (None without boxes).
    """
    prompt_encoder, decoder = sam.prompt_encoder, sam.mask_decoder
    batch = image_index.shape[0]
    logits: list[Optional[torch.Tensor]] = [None] * batch
    iou = semantic_prompt.new_zeros((batch,), dtype=torch.float32)
    sam_boxes = None if boxes is None else boxes.new_zeros(boxes.shape, dtype=torch.float32)
    embed_dtype = features.sam_embeddings.dtype
    pe_dtype = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.dtype
    image_pe = prompt_encoder.get_dense_pe().to(embed_dtype)  # the same for every image
    for image in torch.unique(image_index).tolist():
        rows = (image_index == image).nonzero(as_tuple=True)[0]
        input_size = features.input_sizes[image]
        semantic = semantic_prompt[rows].unsqueeze(1).to(embed_dtype)
        if boxes is not None:
            frame = transform.boxes_from_normalized(boxes[rows].float(), input_size)
            sam_boxes[rows] = frame
            sparse, dense = prompt_encoder(points=None, boxes=frame.to(pe_dtype), masks=None)
            sparse = torch.cat([sparse.to(embed_dtype), semantic], dim=1)
        else:
            sparse = semantic
            h, w = prompt_encoder.image_embedding_size
            dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(rows.numel(), -1, h, w)
        low_res, quality = decoder(
            image_embeddings=features.sam_embeddings[image : image + 1],
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense.to(embed_dtype),
            multimask_output=False,
        )
        full = transform.postprocess_masks(low_res, input_size, features.original_sizes[image])
        for k, row in enumerate(rows.tolist()):
            logits[row] = full[k, 0]
        iou[rows] = quality[:, 0].float()
    return logits, iou, sam_boxes  # type: ignore[return-value]


def unreached_prompt_parts(sam: "Sam", has_box: bool) -> list[torch.nn.Module]:
    """SAM's parts that this prompting never reaches: points, the mask prompt, the IoU estimate (not
    in the objective), the hypernetworks of masks 2..n (single-mask output reads the first) and,
    without a box, the two box-corner embeddings."""
    prompt, decoder = sam.prompt_encoder, sam.mask_decoder
    unreached = [prompt.point_embeddings[0], prompt.point_embeddings[1], prompt.not_a_point_embed]
    unreached += [prompt.mask_downscaling, decoder.iou_prediction_head, *decoder.output_hypernetworks_mlps[1:]]
    if not has_box:
        unreached += [prompt.point_embeddings[2], prompt.point_embeddings[3]]
    return unreached


def mask_confidence(logits: torch.Tensor) -> torch.Tensor:
    """Mean foreground probability inside the predicted mask; 0 when the mask is empty."""
    inside = logits > 0
    if not bool(inside.any()):
        return logits.new_zeros((), dtype=torch.float32)
    return logits[inside].float().sigmoid().mean()
