"""Which modules a PPCR variant has, decided here once.

The model's constructor builds what these functions name, checkpoints save and load exactly
those modules (``heads.safetensors``, the adapter folders), and freezing asks which SAM prompt
parts a variant never reaches. A new variant knob is therefore taught to the model, the saver
and the loader in one place.
"""

from __future__ import annotations

from ppcr.config.schema import ModelSpec, SpatialPrompt
from ppcr.modeling.adapters import SEMANTIC, SPATIAL


def has_spatial_stage(spatial_prompt: SpatialPrompt) -> bool:
    """Whether the variant runs stage 2 (the spatial conversation, ``[BOX]`` and a box head)."""
    return spatial_prompt != "none"


def has_sem_slot(spatial_prompt: SpatialPrompt) -> bool:
    """Whether the spatial prompt holds ``<sem>``, whose input is ``sem_to_input(h_sem)``."""
    return spatial_prompt in ("semantic", "expression+semantic")


def adapter_names(spec: ModelSpec) -> tuple[str, ...]:
    """The LoRA adapters: ``semantic`` always, ``spatial`` with a spatial stage."""
    return (SEMANTIC, SPATIAL) if has_spatial_stage(spec.spatial_prompt) else (SEMANTIC,)


def trained_module_paths(spec: ModelSpec) -> dict[str, str]:
    """Name → attribute path in :class:`~ppcr.modeling.model.PPCRModel` of every fully trained
    module besides the LoRA adapters; what ``heads.safetensors`` holds (keys ``<name>.<param>``)."""
    spatial = has_spatial_stage(spec.spatial_prompt)
    paths = {"token_rows": "token_rows", "semantic_proj": "semantic_proj", "mask_decoder": "sam.mask_decoder"}
    if has_sem_slot(spec.spatial_prompt):
        paths["sem_to_input"] = "sem_to_input"
    if spatial:
        paths["box_head"] = "box_head"
    if spec.head_norm == "batch":
        paths["h_sem_norm"] = "h_sem_norm"
        if spatial:
            paths["p_box_norm"] = "p_box_norm"
    return paths


def same_box_head(a: ModelSpec, b: ModelSpec) -> bool:
    """Whether a box head saved under spec ``a`` has the architecture spec ``b`` builds."""
    return (a.spatial_head, a.attn_head, a.pointer_head) == (b.spatial_head, b.attn_head, b.pointer_head)
