"""GLaMM's released checkpoints (original-LLaVA key layout) renamed into PPCR's components.

GLaMM (``MBZUAI/GLaMM-GranD-Pretrained``, ``MBZUAI/GLaMM-RefSeg``) ships merged full weights of
``GLaMMForCausalLM``: the Llama LLM as ``model.embed_tokens``,
``model.layers.*``, ``model.norm`` and ``lm_head``; the LLaVA projector as ``model.mm_projector.{0,2}``;
SAM-H as ``model.grounding_encoder.*``; the [SEG] head as ``model.text_hidden_fcs.0.{0,2}``; and the
bbox region encoder as ``model.region_encoder.*``. A ``base_model.model.`` prefix (peft wrapping
before merging) is accepted everywhere. The CLIP tower is normally *absent*: the merge script drops
every ``vision_tower`` key, so CLIP comes from ``openai/clip-vit-large-patch14-336`` (the ``--clip``
source, :data:`ppcr.weights.standard_mappings.CLIP`); if a checkpoint does carry
``model.vision_tower.vision_tower.vision_model.*`` it is used.

Note: transformers 5's ``CLIPVisionModel`` has no ``vision_model.`` level, so the LLaVA tower's
parameters are ``model.vision_tower.embeddings.*`` / ``encoder.*`` / ``pre_layrnorm`` /
``post_layernorm`` (checked against ``LlavaForConditionalGeneration`` in the tests).

Prompt format. GLaMM was trained with the image placeholder wrapped as
``<im_start><image><im_end>`` (``mm_use_im_start_end``, GLaMM's ``dataset/dataset.py``) inside
``"The <image> provides an overview of the picture.\\n"``; its ``embed_tokens`` rows for
``<im_start>``/``<im_end>`` were trained (embed_tokens is fully trainable in GLaMM). llava-hf
prompts have a bare ``<image>`` (expanded to 576 ``<image>`` tokens by the processor). Because
transformers' LLaVA needs an ``<image>`` token *id* in the vocabulary, PPCR uses the llava-hf
tokenizer (``<image>`` 32000, ``<pad>`` 32001) plus its own added tokens, so GLaMM's ids do not
carry over: ``<im_start>`` is 32000 in GLaMM but 32000 is ``<image>`` in llava-hf. The rows are
therefore moved by token *string* (:mod:`ppcr.weights.token_rows`). When initialising from GLaMM,
PPCR's tokenizer must contain ``<im_start>`` and ``<im_end>`` (:data:`GLAMM_CARRIED_TOKENS`) and its
prompt builder must write GLaMM's whole conversation (``ppcr.modeling.config.GLAMM_PROMPT``: the
llava_v1 system prompt, the image wrapped as ``<im_start><image><im_end>`` inside that sentence) so
the LLM sees the sequence it was trained on; from plain llava-hf weights llava-hf's prompt is used.
(Decision recorded in the report.)
"""

from __future__ import annotations

import re

from ppcr.weights.key_mapping import KeyMapping, MappedKey, Rule

_P = r"(?:base_model\.model\.)?"  # peft wrapper prefix, present in some merged dumps

GLAMM = KeyMapping(
    name="GLaMM",
    rules=(
        Rule(r".+\.rotary_emb\.inv_freq", None, "rotary", "rotary frequencies are recomputed from the config"),
        Rule(_P + r"model\.embed_tokens\.weight", "model.language_model.embed_tokens.weight", "llava"),
        Rule(_P + r"model\.layers\.(\d+\..+)", r"model.language_model.layers.\1", "llava"),
        Rule(_P + r"model\.norm\.weight", "model.language_model.norm.weight", "llava"),
        Rule(_P + r"lm_head\.weight", "lm_head.weight", "llava"),
        Rule(_P + r"model\.mm_projector\.0\.(weight|bias)", r"model.multi_modal_projector.linear_1.\1", "llava"),
        Rule(_P + r"model\.mm_projector\.2\.(weight|bias)", r"model.multi_modal_projector.linear_2.\1", "llava"),
        Rule(
            _P + r"model\.vision_tower\.vision_tower\.vision_model\.embeddings\.position_ids",
            None,
            "vision_tower",
            "non-persistent buffer in transformers 5 (recomputed)",
        ),
        Rule(_P + r"model\.vision_tower\.vision_tower\.vision_model\.(.+)", r"model.vision_tower.\1", "llava"),
        Rule(_P + r"model\.grounding_encoder\.(image_encoder|prompt_encoder|mask_decoder)\.(.+)", r"\1.\2", "sam"),
        Rule(
            _P + r"model\.grounding_encoder\.pixel_(mean|std)",
            None,
            "sam",
            "SAM's pixel normalisation is a non-persistent buffer set by the model",
        ),
        Rule(_P + r"model\.text_hidden_fcs\.0\.([02])\.(weight|bias)", r"semantic_proj.\1.\2", "semantic_proj"),
        Rule(
            _P + r"model\.region_encoder\..+",
            None,
            "region_encoder",
            "GLaMM's bbox-input region encoder; PPCR has no region inputs",
        ),
    ),
    anchors=(
        _P + r"model\.embed_tokens\.weight",
        _P + r"model\.layers\.0\.self_attn\.q_proj\.weight",
        _P + r"model\.grounding_encoder\.mask_decoder\..+",
        _P + r"model\.text_hidden_fcs\.0\.0\.weight",
    ),
)

# GLaMM's added tokens and their ids in the released tokenizers (the order its train.py adds them).
GLAMM_ADDED_TOKENS: dict[str, int] = {
    "<im_start>": 32000,
    "<im_end>": 32001,
    "<bbox>": 32002,
    "<point>": 32003,
    "[SEG]": 32004,
    "<p>": 32005,
    "</p>": 32006,
}
GLAMM_BASE_VOCAB = 32000  # the Llama/Vicuna SentencePiece vocabulary shared with llava-hf

# Added-token rows PPCR carries over from GLaMM: [SEG] (the trained segmentation token) and the
# image wrappers (see the module docstring). <bbox>, <point>, <p>, </p> serve GLaMM's region and
# grounded-caption tasks, which PPCR does not have.
GLAMM_CARRIED_TOKENS: tuple[str, ...] = ("[SEG]", "<im_start>", "<im_end>")

# The parameters that hold one row per token and so need remapping to PPCR's token ids.
TOKEN_ROW_TARGETS: tuple[str, ...] = ("model.language_model.embed_tokens.weight", "lm_head.weight")


# What GLaMM's RefSeg fine-tuning trained (groundingLMM ``train_ft.py --pretrained``): a LoRA on the
# LLM layers' q_proj/v_proj (merged into those weights on release) and, in full, every parameter
# whose name contains one of GLAMM_FULLY_TRAINED (``set_trainable_modules``). Everything else
# (k/o projections, MLPs, norms, mm_projector, SAM's image and prompt encoders, a vision tower)
# was frozen, so it is bit-identical in GLaMM-GranD-Pretrained and every model fine-tuned from it.
GLAMM_LORA_WEIGHT = re.compile(_P + r"model\.layers\.\d+\.self_attn\.(?:q_proj|v_proj)\.weight")
GLAMM_FULLY_TRAINED: tuple[str, ...] = ("lm_head", "embed_tokens", "mask_decoder", "text_hidden_fcs", "region_encoder")


def kept_frozen(key: str) -> bool:
    """Whether GLaMM's RefSeg fine-tuning left the tensor ``key`` (GLaMM's name) unchanged."""
    return not GLAMM_LORA_WEIGHT.fullmatch(key) and not any(part in key for part in GLAMM_FULLY_TRAINED)


def map_key(key: str) -> MappedKey | None:
    """Map one GLaMM key to its PPCR target (None for a key no rule knows)."""
    return GLAMM.map_key(key)
