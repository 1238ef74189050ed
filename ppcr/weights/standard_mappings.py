"""Rule tables for the standard weight sources: llava-hf, CLIP and segment-anything's SAM.

These are the sources of ``ppcr prepare weights --from llava`` (llava-hf + SAM ``.pth``) and the
``--clip`` source that supplies the vision tower GLaMM's released weights leave out.

- llava-hf (``llava-hf/llava-1.5-7b-hf``): on disk the pre-4.52 names (``language_model.model.*``,
  ``language_model.lm_head.weight``, ``vision_tower.vision_model.*``, ``multi_modal_projector.*``);
  transformers 5's ``save_pretrained`` writes ``vision_tower.*`` without ``vision_model.``; the
  in-memory names (``model.language_model.*`` ...) are accepted too.
- CLIP (``openai/clip-vit-large-patch14-336``, a full ``CLIPModel``): only ``vision_model.*`` is
  kept; the text tower and both projections are dropped with a reason.
- SAM (``sam_vit_h_4b8939.pth``): already in segment-anything's layout; kept as is.
"""

from __future__ import annotations

from ppcr.weights.glamm_mapping import GLAMM
from ppcr.weights.key_mapping import KeyMapping, Rule

_ROTARY = Rule(r".+\.rotary_emb\.inv_freq", None, "rotary", "rotary frequencies are recomputed from the config")
_POSITION_IDS = "non-persistent buffer in transformers 5 (recomputed)"

LLAVA_HF = KeyMapping(
    name="llava-hf",
    rules=(
        _ROTARY,
        Rule(r"(?:language_model\.model|model\.language_model)\.(.+)", r"model.language_model.\1", "llava"),
        Rule(r"(?:language_model\.)?lm_head\.weight", "lm_head.weight", "llava"),
        Rule(
            r"(?:model\.)?vision_tower\.(?:vision_model\.)?embeddings\.position_ids",
            None,
            "vision_tower",
            _POSITION_IDS,
        ),
        Rule(r"(?:model\.)?vision_tower\.(?:vision_model\.)?(.+)", r"model.vision_tower.\1", "llava"),
        Rule(
            r"(?:model\.)?multi_modal_projector\.(linear_[12]\.(?:weight|bias))",
            r"model.multi_modal_projector.\1",
            "llava",
        ),
    ),
    anchors=(
        r"(?:language_model\.model|model\.language_model)\.embed_tokens\.weight",
        r"(?:model\.)?multi_modal_projector\.linear_1\.weight",
    ),
)

CLIP = KeyMapping(
    name="CLIP",
    rules=(
        Rule(r"vision_model\.embeddings\.position_ids", None, "vision_tower", _POSITION_IDS),
        Rule(r"vision_model\.(.+)", r"model.vision_tower.\1", "llava"),
        Rule(
            r"(?:embeddings|encoder|pre_layrnorm|post_layernorm)\..+",
            r"model.vision_tower.\g<0>",
            "llava",
        ),
        Rule(
            r"text_model\..+|text_projection\.weight|visual_projection\.weight|logit_scale",
            None,
            "clip_text",
            "CLIP's text tower and projections; LLaVA uses only the vision encoder",
        ),
    ),
    anchors=(r"(?:vision_model\.)?embeddings\.patch_embedding\.weight",),
)

SAM = KeyMapping(
    name="SAM",
    rules=(
        Rule(r"(image_encoder|prompt_encoder|mask_decoder)\..+", r"\g<0>", "sam"),
        Rule(r"pixel_(mean|std)", None, "sam", "SAM's pixel normalisation is a non-persistent buffer"),
    ),
    anchors=(r"image_encoder\.patch_embed\.proj\.weight", r"mask_decoder\.mask_tokens\.weight"),
)

KNOWN_LAYOUTS: tuple[KeyMapping, ...] = (GLAMM, LLAVA_HF, CLIP, SAM)


def identify_layout(keys: list[str]) -> KeyMapping | None:
    """The first known layout whose anchors all match ``keys`` (GLaMM before llava-hf)."""
    return next((mapping for mapping in KNOWN_LAYOUTS if mapping.matches_layout(keys)), None)
