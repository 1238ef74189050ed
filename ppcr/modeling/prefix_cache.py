"""Sharing each image's prompt prefix through the LLM's KV cache (inference only).

The conversation prefix (BOS, ``USER:``, the image tokens) is identical for every expression of
an image, so it is run once per image and its cache is repeated for that image's expressions;
only the suffixes are batched. Mathematically the same as the plain forward: right padding never
affects earlier positions under causal attention.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from ppcr.modeling.batch import StageInputs
from ppcr.modeling.config import TokenIds
from ppcr.modeling.kv_cache import cache_keyword, returned_cache

if TYPE_CHECKING:  # pragma: no cover
    from ppcr.modeling.model import PPCRModel


def prefix_length(input_ids: torch.Tensor, token_ids: TokenIds) -> Optional[int]:
    """Length of the prefix every row shares up to and including the image tokens, if any.

    With the question before the image (``prompt_order: question_first``) rows share at most
    their template, so there is usually no such prefix and every row runs whole."""
    image_slots = (input_ids == token_ids.image).to(torch.long)
    if int(image_slots.sum()) == 0:
        return None
    last = input_ids.shape[1] - 1 - image_slots.flip(1).argmax(dim=1)
    if not bool((last == last[0]).all()):
        return None
    length = int(last[0]) + 1
    if not bool((input_ids[:, :length] == input_ids[:1, :length]).all()):
        return None
    if bool((input_ids[:, :length] == token_ids.sem).any()):
        return None  # <sem> carries each row's own h_sem: equal ids, different inputs
    return length


def shared_prefix_hidden(
    model: "PPCRModel",
    stage: StageInputs,
    clip_tokens: torch.Tensor,
    image_index: torch.Tensor,
    sem_input: Optional[torch.Tensor],
) -> Optional[torch.Tensor]:
    """One stage's last-layer hidden states with one KV-cached prefix per image (see the module
    docstring and docs/design.md, "Evaluation"); None when the rows share no image prefix."""
    prefix = prefix_length(stage.input_ids, model.token_ids)
    if prefix is None or prefix >= stage.input_ids.shape[1]:
        return None
    batch, length = stage.input_ids.shape
    hidden = None
    for image in torch.unique(image_index).tolist():
        rows = (image_index == image).nonzero(as_tuple=True)[0]
        prefix_ids = stage.input_ids[rows[:1], :prefix]
        prefix_embeds = model._input_embeddings(prefix_ids, clip_tokens[image : image + 1], None)
        prefix_mask = torch.ones_like(prefix_ids)
        prefix_out = model._language_model(prefix_embeds, prefix_mask, use_cache=True)
        cache = returned_cache(prefix_out)
        if rows.numel() > 1:
            cache.batch_repeat_interleave(rows.numel())
        suffix_ids = stage.input_ids[rows, prefix:]
        suffix_embeds = model._input_embeddings(
            suffix_ids, None, None if sem_input is None else sem_input[rows]
        )
        mask = torch.cat(
            [torch.ones((rows.numel(), prefix), dtype=stage.attention_mask.dtype, device=suffix_ids.device),
             stage.attention_mask[rows, prefix:]],
            dim=1,
        )
        cached = {cache_keyword(type(model.language_model)): cache}
        suffix_out = model._language_model(suffix_embeds, mask, use_cache=True, **cached)
        rows_hidden = torch.cat(
            [prefix_out.last_hidden_state.expand(rows.numel(), -1, -1), suffix_out.last_hidden_state], dim=1
        )
        if hidden is None:
            hidden = rows_hidden.new_zeros((batch, length, rows_hidden.shape[-1]))
        hidden[rows] = rows_hidden
    return hidden
