"""Per-component parameter counts on the meta device match the published architectures."""

from __future__ import annotations

import dataclasses

import pytest

from ppcr.config.schema import ModelSpec, Recipe
from ppcr.modeling.summary import COMPONENTS, parameter_rows

D, FF, LAYERS, VOCAB = 4096, 11008, 32, 32064  # Vicuna-7B in llava-1.5-7b-hf
CLIP_D, CLIP_FF, CLIP_LAYERS, CLIP_TOKENS = 1024, 4096, 24, 577  # ViT-L/14 at 336 px (+CLS)


def llama_7b_params() -> int:
    attention = 4 * D * D  # q, k, v, o without bias
    mlp = 3 * D * FF  # gate, up, down
    norms = 2 * D
    return 2 * VOCAB * D + LAYERS * (attention + mlp + norms) + D  # embed + lm_head + final norm


def clip_vit_l_336_params() -> int:
    embeddings = 3 * 14 * 14 * CLIP_D + CLIP_D + CLIP_TOKENS * CLIP_D  # patch conv, CLS, positions
    layer = 4 * (CLIP_D * CLIP_D + CLIP_D) + (CLIP_D * CLIP_FF + CLIP_FF) + (CLIP_FF * CLIP_D + CLIP_D) + 4 * CLIP_D
    return embeddings + 2 * CLIP_D + CLIP_LAYERS * layer + 2 * CLIP_D  # + pre/post layer norms


@pytest.fixture(scope="module")
def paper_rows():
    return {name: (total, trainable) for name, total, trainable in parameter_rows(Recipe(model=ModelSpec()))}


def test_paper_architecture_counts(paper_rows):
    assert list(paper_rows) == list(COMPONENTS)
    assert paper_rows["language model"] == (llama_7b_params(), 0)
    assert 6.7e9 < llama_7b_params() < 6.8e9
    assert paper_rows["CLIP vision tower"] == (clip_vit_l_336_params(), 0)
    assert 0.30e9 < clip_vit_l_336_params() < 0.31e9
    assert paper_rows["projector"] == (CLIP_D * D + D + D * D + D, 0)
    encoder = paper_rows["SAM image encoder"][0]
    sam = encoder + paper_rows["SAM prompt encoder"][0] + paper_rows["SAM mask decoder"][0]
    assert 0.63e9 < encoder < 0.64e9 and 0.64e9 < sam < 0.645e9


def test_paper_trainable_parts(paper_rows):
    lora = LAYERS * 2 * (8 * D + D * 8)  # q and v, A (r×d) and B (d×r), rank 8
    assert paper_rows["LoRA semantic"] == (lora, lora)
    assert paper_rows["LoRA spatial"] == (lora, lora)
    assert paper_rows["added-token rows"] == (2 * 3 * D, 2 * 3 * D)
    semantic_proj = D * D + D + D * 256 + 256
    sem_to_input = D * D + D
    box_mlp = D * D + D + D * 4 + 4
    assert paper_rows["heads"] == (semantic_proj + sem_to_input + box_mlp,) * 2
    decoder = paper_rows["SAM mask decoder"]
    # Trained except what no PPCR loss reaches (IoU head, hypernetworks of mask tokens 1-3).
    assert 3.9e6 < decoder[0] < 4.2e6 and 3.3e6 < decoder[1] < decoder[0] - 0.4e6
    for frozen in ("CLIP vision tower", "projector", "SAM image encoder", "SAM prompt encoder"):
        assert paper_rows[frozen][1] == 0


def test_variant_none_has_no_spatial_adapter_and_only_the_semantic_head():
    rows = {name: total for name, total, _ in parameter_rows(Recipe(model=ModelSpec(spatial_prompt="none")))}
    assert rows["LoRA spatial"] == 0
    assert rows["heads"] == D * D + D + D * 256 + 256


def test_attention_head_is_heavier_than_the_mlp(paper_rows):
    spec = dataclasses.replace(ModelSpec(), spatial_head="attn")
    rows = {name: total for name, total, _ in parameter_rows(Recipe(model=spec))}
    assert rows["heads"] > paper_rows["heads"][0]
