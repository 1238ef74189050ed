"""The paper architecture with random weights, without any download: the stand-in tokenizer has
llava-1.5-7b-hf's size and special ids, and ``build_model`` constructs the 7B model directly in the
requested dtype and device (``meta`` here: no memory), optionally with fewer LLM layers."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ppcr.config.loading import load_recipe  # noqa: E402
from ppcr.errors import PPCRError  # noqa: E402
from ppcr.modeling.build import build_model  # noqa: E402
from ppcr.modeling.llava import LLAVA_7B_IMAGE_TOKEN_ID, LLAVA_7B_PAD_TOKEN_ID, LLAVA_7B_VOCAB, add_ppcr_tokens  # noqa: E402
from ppcr.modeling.tokenizer import stand_in_llava_tokenizer  # noqa: E402

RANDOM_7B = ["init.source=random", "init.tokenizer=stand-in"]


def test_stand_in_tokenizer_has_llavas_layout_and_encodes_prompts():
    tokenizer = stand_in_llava_tokenizer()
    assert len(tokenizer) == 32002
    assert tokenizer.convert_tokens_to_ids(["<unk>", "<s>", "</s>"]) == [0, 1, 2]
    assert tokenizer.convert_tokens_to_ids("<image>") == LLAVA_7B_IMAGE_TOKEN_ID
    assert tokenizer.pad_token_id == LLAVA_7B_PAD_TOKEN_ID
    ids = add_ppcr_tokens(tokenizer)
    assert (ids.seg, ids.box, ids.sem) == (32002, 32003, 32004)
    text = "USER: <image>\nCan you segment the man on the left in this image? ASSISTANT: It is [SEG]."
    encoded = tokenizer(text, add_special_tokens=False).input_ids
    assert encoded.count(LLAVA_7B_IMAGE_TOKEN_ID) == 1 and encoded.count(ids.seg) == 1
    assert max(i for i in encoded if i < 32000) < 2000  # fillers are never produced
    assert tokenizer.decode(encoded) == text


def test_random_7b_on_meta_has_the_paper_widths_and_can_be_cut():
    model = build_model(load_recipe("paper", RANDOM_7B), dtype=torch.bfloat16, device="meta", llm_layers=2)
    assert model.hidden_size == 4096 and model.image_seq_length == 576
    assert model.clip_image_size == 336 and model.sam_image_size == 1024
    assert model.sam.prompt_encoder.embed_dim == 256 and model.sam.prompt_encoder.image_embedding_size == (64, 64)
    assert len(model.language_model.layers) == 2 == model.llava.config.text_config.num_hidden_layers
    assert model.llava.get_input_embeddings().weight.shape == (LLAVA_7B_VOCAB, 4096)
    parameters = list(model.parameters())
    assert all(p.is_meta for p in parameters) and {p.dtype for p in parameters} == {torch.bfloat16}
    # SAM's Fourier matrix stays float32 (box corners), and the tokenizer travels with the model.
    assert model.sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.dtype == torch.float32
    assert model.token_ids.image == LLAVA_7B_IMAGE_TOKEN_ID and len(model.tokenizer) == 32005
    assert torch.get_default_dtype() == torch.float32  # restored


@pytest.mark.parametrize("layers", [0, 33, 2.5])
def test_bad_layer_counts_are_refused(layers):
    with pytest.raises(PPCRError, match="llm_layers must be an integer from 1 to 32"):
        build_model(load_recipe("paper", RANDOM_7B), device="meta", llm_layers=layers)


def test_layer_cut_needs_a_random_model():
    with pytest.raises(PPCRError, match="llm_layers cuts a randomly initialised model only"):
        build_model(load_recipe("paper"), llm_layers=2)
