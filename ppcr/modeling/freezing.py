"""What PPCR trains and what it keeps frozen (docs/design.md, "Trainable and frozen parts").

Everything is frozen, then the LoRA adapters, the PPCR-trained modules (which ones a variant has:
:func:`ppcr.modeling.variant.trained_module_paths`) and the base parts that ``model.unfreeze``
names are unfrozen; parts no forward reaches stay frozen whatever was asked, so the optimizer
carries no dead weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from ppcr.errors import PPCRError
from ppcr.modeling.sam_prompting import unreached_prompt_parts
from ppcr.modeling.variant import has_spatial_stage

if TYPE_CHECKING:  # pragma: no cover
    from ppcr.modeling.model import PPCRModel


def set_trainable(model: "PPCRModel") -> None:
    """Set ``requires_grad`` on every parameter of ``model`` as the module docstring says."""
    model.requires_grad_(False)
    for parameter in model.adapters.all_parameters():
        parameter.requires_grad_(True)
    for module in model.trainable_modules().values():
        module.requires_grad_(True)
    for name in model.spec.unfreeze:
        for module in base_component(model, name):
            module.requires_grad_(True)
    for module in unreached_modules(model):
        module.requires_grad_(False)


def unreached_modules(model: "PPCRModel") -> list[nn.Module]:
    """Parts of the trained modules that no PPCR forward reaches: LLaVA reads CLIP's hidden
    states, never its pooled output (``post_layernorm``); SAM's prompt parts that the variant's
    prompting never uses (:func:`~ppcr.modeling.sam_prompting.unreached_prompt_parts`)."""
    tower = model.llava.model.vision_tower
    vision = getattr(tower, "vision_model", tower)
    unreached = unreached_prompt_parts(model.sam, has_box=has_spatial_stage(model.spec.spatial_prompt))
    if getattr(vision, "post_layernorm", None) is not None:
        unreached.append(vision.post_layernorm)
    return unreached


def base_component(model: "PPCRModel", name: str) -> list[nn.Module]:
    """The modules behind a ``model.unfreeze`` name (``BaseComponent`` in ppcr.config.schema)."""
    llava = model.llava
    components = {
        "language_model": lambda: [model.language_model],
        "vision_tower": lambda: [llava.model.vision_tower],
        "projector": lambda: [llava.model.multi_modal_projector],
        "embeddings": lambda: [llava.get_input_embeddings(), llava.get_output_embeddings()],
        "sam_image_encoder": lambda: [model.sam.image_encoder],
        "sam_prompt_encoder": lambda: [model.sam.prompt_encoder],
    }
    if name not in components:
        raise PPCRError(f"unknown base component {name!r}; valid: {', '.join(components)}")
    return components[name]()
