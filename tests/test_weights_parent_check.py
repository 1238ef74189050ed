"""GranD must be RefSeg's parent: every tensor GLaMM's fine-tuning kept frozen is identical in both.

The pairs are tiny GLaMM releases (``GlammLike.released_state_dict``: bf16 LLM, fp32 SAM and heads)
and RefSeg made from GranD as GLaMM made it (``glamm_release_pair``). Which tensors are frozen is
written out here from GLaMM's ``train_ft.py`` (not taken from ``ppcr.weights``).
"""

from __future__ import annotations

import pytest
import torch

from ppcr.errors import CheckpointError
from ppcr.weights.parent_check import CHILD, PARENT, ParentCheck
from tests.weights_builders import GLAMM_FULLY_TRAINED, GLAMM_LORA_KEY, GlammLike, glamm_release_pair

# One tensor of each part GLaMM's RefSeg fine-tuning leaves frozen (the full rule: GLAMM_LORA_KEY
# and GLAMM_FULLY_TRAINED in tests/weights_builders.py).
FROZEN = [
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.1.self_attn.o_proj.weight",
    "model.layers.0.mlp.gate_proj.weight",
    "model.layers.1.mlp.down_proj.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.1.post_attention_layernorm.weight",
    "model.norm.weight",
    "model.mm_projector.0.weight",
    "model.mm_projector.2.bias",
    "model.grounding_encoder.image_encoder.blocks.0.attn.qkv.weight",
    "model.grounding_encoder.image_encoder.neck.0.weight",
    "model.grounding_encoder.prompt_encoder.point_embeddings.2.weight",
    "model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
    "model.vision_tower.vision_tower.vision_model.encoder.layers.1.self_attn.q_proj.weight",  # no LoRA in CLIP
]
# What it trains: the merged q/v LoRA and the parts set_trainable_modules unfreezes.
TRAINED = [
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.1.self_attn.v_proj.weight",
    "model.embed_tokens.weight",
    "lm_head.weight",
    "model.grounding_encoder.mask_decoder.iou_token.weight",
    "model.text_hidden_fcs.0.0.weight",
    "model.region_encoder.roi_align.updims.weight",
]


@pytest.fixture(scope="module")
def pair() -> tuple[dict, dict]:
    return glamm_release_pair(GlammLike(with_vision_tower=True, seed=0).released_state_dict())


def check(grand: dict, refseg: dict) -> dict:
    """Both states streamed side by side through a ParentCheck, as the conversion does."""
    parent = ParentCheck("GRAND", "REFSEG")
    streams = [parent.watch(iter(refseg.items()), CHILD), parent.watch(iter(grand.items()), PARENT)]
    live = [True, True]
    while any(live):
        for i, stream in enumerate(streams):
            if live[i] and next(stream, None) is None:
                live[i] = False
    return parent.finish()


def one_ulp_more(tensor: torch.Tensor) -> torch.Tensor:
    """The same tensor with its first element moved to the next representable value."""
    changed = tensor.clone()
    flat = changed.view(-1)
    flat[0] = torch.nextafter(flat[0].float(), torch.tensor(float("inf"))).to(tensor.dtype)
    if torch.equal(changed, tensor):  # bf16: step by its own ulp
        flat[0] = (flat[0].float() * (1 + 2**-7) + 2**-20).to(tensor.dtype)
    assert not torch.equal(changed, tensor)
    return changed


def test_a_parent_and_its_fine_tuned_child_pass(pair):
    grand, refseg = pair
    assert all(not torch.equal(grand[k], refseg[k]) for k in TRAINED)  # the fine-tuning changed these
    summary = check(grand, refseg)
    frozen = [k for k in grand if not GLAMM_LORA_KEY.fullmatch(k) and not any(p in k for p in GLAMM_FULLY_TRAINED)]
    assert set(FROZEN) <= set(frozen) and not set(TRAINED) & set(frozen)
    assert summary == {"parent": "GRAND", "child": "REFSEG", "frozen_tensors_identical": len(frozen)}


@pytest.mark.parametrize("key", FROZEN)
def test_one_changed_frozen_tensor_is_refused_in_one_line(pair, key):
    grand, refseg = pair
    changed = {**refseg, key: one_ulp_more(refseg[key])}
    with pytest.raises(CheckpointError) as error:
        check(grand, changed)
    message = error.value.message
    assert message.startswith(f"REFSEG was not fine-tuned from GRAND: {key}, which GLaMM's fine-tuning keeps frozen")
    assert "\n" not in message and "--base" in error.value.hint


def test_changes_to_what_glamm_trains_are_expected(pair):
    grand, refseg = pair
    changed = {**refseg, **{k: one_ulp_more(refseg[k]) for k in TRAINED}}
    assert check(grand, changed)["frozen_tensors_identical"] > len(FROZEN)


def test_an_unrelated_checkpoint_is_refused(pair):
    _, refseg = pair
    other = GlammLike(with_vision_tower=True, seed=1).released_state_dict()
    with pytest.raises(CheckpointError, match="REFSEG was not fine-tuned from GRAND: .* differs"):
        check(other, refseg)


def test_the_same_values_in_another_dtype_are_identical(pair):
    grand, refseg = pair
    key = "model.layers.0.mlp.up_proj.weight"
    assert refseg[key].dtype == torch.bfloat16
    summary = check(grand, {**refseg, key: refseg[key].float()})  # lossless widening
    assert summary["frozen_tensors_identical"] == check(grand, refseg)["frozen_tensors_identical"]


def test_a_difference_within_bf16_rounding_says_so(pair):
    grand, refseg = pair
    key = "model.grounding_encoder.image_encoder.neck.0.weight"  # fp32 in the release
    nudged = refseg[key].clone()
    nudged.view(-1)[0] = torch.nextafter(nudged.view(-1)[0], torch.tensor(float("inf")))
    with pytest.raises(CheckpointError, match="within bf16 rounding"):
        check(grand, {**refseg, key: nudged})


def test_a_frozen_tensor_in_only_one_checkpoint_is_refused(pair):
    grand, refseg = pair
    key = "model.layers.1.mlp.up_proj.weight"
    with pytest.raises(CheckpointError, match=f"{key} is in GRAND but not in REFSEG"):
        check(grand, {k: v for k, v in refseg.items() if k != key})
    # The vision tower (dropped by GLaMM's merge script) and rotary buffers may be absent on one side.
    optional = ("model.vision_tower.", "model.layers.0.self_attn.rotary_emb.inv_freq")
    assert check(grand, {k: v for k, v in refseg.items() if not k.startswith(optional)})
