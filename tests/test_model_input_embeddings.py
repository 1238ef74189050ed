"""``PPCRModel.input_embeddings``: the public way to build a stage's LLM inputs, for analyses that
run the language model themselves (experiments/probe_box_attention.py). Run through the stage's
adapter, those inputs must give exactly the states the model's own forward reads."""

from __future__ import annotations

import pytest
import torch

from ppcr.modeling.adapters import SEMANTIC, SPATIAL
from ppcr.modeling.build import build_model
from ppcr.modeling.processor import PPCRProcessor
from tests.test_model_forward import randomise_lora_b, synthetic_samples
from tests.tiny_recipes import tiny_recipe


@pytest.fixture(scope="module")
def model_and_batch():
    model = build_model(tiny_recipe(spatial_prompt="semantic")).eval()
    randomise_lora_b(model)  # the adapters then change the states, so routing matters
    batch = PPCRProcessor.from_model(model)(synthetic_samples())
    return model, batch


def _state_before(hidden: torch.Tensor, input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    before = (input_ids == token_id).long().argmax(dim=1) - 1
    return hidden[torch.arange(input_ids.shape[0]), before]


def test_stage_inputs_through_the_adapter_give_the_forwards_h_sem_and_p_box(model_and_batch):
    model, batch = model_and_batch
    text, ids = batch.text, model.token_ids
    with torch.no_grad():
        features = model.encode_images(batch.images)
        expected = model.segment(features, text, share_prefix=False)
        image_tokens = features.clip_tokens[text.image_index]

        semantic = text.semantic
        embeds = model.input_embeddings(semantic.input_ids, image_tokens)
        with model.adapters.use(SEMANTIC):
            hidden = model.language_model(inputs_embeds=embeds, attention_mask=semantic.attention_mask)
        h_sem = _state_before(hidden.last_hidden_state, semantic.input_ids, ids.seg)

        _, sem_input = model.semantic_prompts(h_sem)
        spatial = text.spatial
        embeds = model.input_embeddings(spatial.input_ids, image_tokens, sem_input)
        with model.adapters.use(SPATIAL):
            hidden = model.language_model(inputs_embeds=embeds, attention_mask=spatial.attention_mask)
        p_box = _state_before(hidden.last_hidden_state, spatial.input_ids, ids.box)

    assert torch.allclose(h_sem, expected.h_sem, atol=1e-5)
    assert torch.allclose(p_box, expected.p_box, atol=1e-5)


def test_image_and_sem_slots_hold_the_given_vectors(model_and_batch):
    model, batch = model_and_batch
    spatial = batch.text.spatial
    rows = spatial.input_ids.shape[0]
    image_tokens = torch.randn(rows, model.image_seq_length, model.hidden_size)
    sem_input = torch.randn(rows, model.hidden_size)
    with torch.no_grad():
        embeds = model.input_embeddings(spatial.input_ids, image_tokens, sem_input)
        plain = model.input_embeddings(spatial.input_ids, image_tokens)
    image_slots = spatial.input_ids == model.token_ids.image
    sem_slots = spatial.input_ids == model.token_ids.sem
    assert torch.equal(embeds[image_slots], image_tokens.reshape(-1, model.hidden_size))
    assert torch.equal(embeds[sem_slots], sem_input)
    # Without a sem_input the slot keeps the <sem> token's own embedding; nothing else changes.
    assert not torch.equal(plain[sem_slots], sem_input)
    assert torch.equal(embeds[~sem_slots], plain[~sem_slots])
