"""Parameter counts per component, computed on the META device (no memory, no weights).

``parameter_rows(recipe)`` builds the recipe's architecture with every tensor on ``meta`` (the
7B model costs nothing) and counts, per component, all parameters and the trainable ones. For
the paper recipe the numbers are those of the published architectures: Llama-7B with the
32064-row LLaVA vocabulary ≈ 6.74 B, CLIP ViT-L/14-336 ≈ 0.30 B, SAM ViT-H ≈ 0.64 B (its image
encoder ≈ 0.63 B).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ppcr.config.schema import ModelSpec, Recipe

if TYPE_CHECKING:  # pragma: no cover
    from ppcr.modeling.model import PPCRModel

COMPONENTS = (
    "language model",
    "CLIP vision tower",
    "projector",
    "SAM image encoder",
    "SAM prompt encoder",
    "SAM mask decoder",
    "LoRA semantic",
    "LoRA spatial",
    "added-token rows",
    "heads",
)


def meta_model(spec: ModelSpec) -> "PPCRModel":
    """The architecture of ``spec`` with all tensors on the meta device."""
    from ppcr.modeling.config import TokenIds
    from ppcr.modeling.llava import (
        LLAVA_7B_IMAGE_TOKEN_ID,
        LLAVA_7B_PAD_TOKEN_ID,
        add_ppcr_tokens,
        build_llava,
        llava_7b_config,
        tiny_llava_config,
    )
    from ppcr.modeling.model import PPCRModel
    from ppcr.modeling.sam import build_sam, sam_architecture

    if spec.size == "tiny":
        from ppcr.modeling.build import vocab_rows
        from ppcr.modeling.tokenizer import train_tiny_tokenizer

        tokenizer = train_tiny_tokenizer(spec.tiny.vocab_size)
        token_ids = add_ppcr_tokens(tokenizer)
        config = tiny_llava_config(spec.tiny, vocab_rows(len(tokenizer)), token_ids)
    else:
        # llava-1.5-7b-hf's tokenizer has 32002 entries; PPCR's three tokens come next.
        first = LLAVA_7B_PAD_TOKEN_ID + 1
        token_ids = TokenIds(
            image=LLAVA_7B_IMAGE_TOKEN_ID, pad=LLAVA_7B_PAD_TOKEN_ID, bos=1, eos=2,
            seg=first, box=first + 1, sem=first + 2,
        )
        config = llava_7b_config()
    with torch.device("meta"):
        llava = build_llava(config, spec.attn_implementation)
        sam = build_sam(sam_architecture(spec.sam, spec.tiny))
        return PPCRModel(spec, llava, sam, token_ids)


def component_modules(model: "PPCRModel") -> dict[str, list[nn.Module]]:
    """Which modules make up each component (LoRA layers are counted apart from the base)."""
    heads = [m for m in (model.semantic_proj, model.sem_to_input, model.box_head) if m is not None]
    return {
        "language model": [model.language_model, model.llava.get_output_embeddings()],
        "CLIP vision tower": [model.llava.model.vision_tower],
        "projector": [model.llava.model.multi_modal_projector],
        "SAM image encoder": [model.sam.image_encoder],
        "SAM prompt encoder": [model.sam.prompt_encoder],
        "SAM mask decoder": [model.sam.mask_decoder],
        "added-token rows": [model.token_rows],
        "heads": heads,
    }


def count_rows(model: "PPCRModel") -> list[tuple[str, int, int]]:
    """(component, total parameters, trainable parameters) for a built model."""
    counts: dict[str, list[int]] = {name: [0, 0] for name in COMPONENTS}
    for name, modules in component_modules(model).items():
        for module in modules:
            for pname, parameter in module.named_parameters():
                if "lora_" in pname:
                    continue
                counts[name][0] += parameter.numel()
                counts[name][1] += parameter.numel() if parameter.requires_grad else 0
    for adapter in model.adapters.names:
        row = counts[f"LoRA {adapter}"]
        for parameter in model.adapters.parameters(adapter).values():
            row[0] += parameter.numel()
            row[1] += parameter.numel() if parameter.requires_grad else 0
    return [(name, total, trainable) for name, (total, trainable) in counts.items()]


def parameter_rows(recipe: Recipe) -> list[tuple[str, int, int]]:
    """Per-component (name, total, trainable) parameter counts of ``recipe.model``, on meta."""
    return count_rows(meta_model(recipe.model))
