"""GLaMM / llava-hf / CLIP / SAM checkpoints renamed into PPCR's components.

The source checkpoints are tiny random instances of the real module trees written in the real
layouts; the mapped tensors must load *strictly* into transformers' LlavaForConditionalGeneration,
segment-anything's Sam and PPCR's semantic_proj, and equal their sources bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ppcr.errors import CheckpointError
from ppcr.weights.glamm_mapping import GLAMM, GLAMM_ADDED_TOKENS, TOKEN_ROW_TARGETS, map_key
from ppcr.weights.key_mapping import check_layout, map_tensors
from ppcr.weights.report import ConversionReport, MappingReport
from ppcr.weights.shards import checkpoint_keys, iter_tensors
from ppcr.weights.standard_mappings import CLIP, KNOWN_LAYOUTS, LLAVA_HF, SAM, identify_layout
from ppcr.weights.token_rows import read_added_tokens, remap_added_token_rows
from tests.weights_builders import (
    BASE_VOCAB,
    GLAMM_VOCAB,
    PPCR_ROWS,
    PPCR_VOCAB,
    GlammLike,
    semantic_proj,
    tiny_clip,
    tiny_llava,
    tiny_sam,
    write_glamm,
    write_single,
)

UNKNOWN_KEY = "model.future_module.weight"


def convert(sources: list[tuple[str, Path, object]], report: MappingReport) -> dict[str, dict[str, torch.Tensor]]:
    """Stream each source through its rule table; collect tensors per component."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for label, path, mapping in sources:
        check_layout(checkpoint_keys(path), mapping, str(path), KNOWN_LAYOUTS)
        for decision, tensor in map_tensors(iter_tensors(path), mapping, report, label):
            out.setdefault(decision.component, {})[decision.target] = tensor
    return out


def expected_targets(llava, sam, head) -> set[str]:
    return set(llava.state_dict()) | set(sam.state_dict()) | set(head.state_dict())


@pytest.fixture(scope="module")
def glamm_release(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """GLaMM as released: no CLIP tower, sharded .bin, bf16 LLM, extra rotary and unknown keys."""
    state = GlammLike(with_vision_tower=False).released_state_dict()
    state[UNKNOWN_KEY] = torch.ones(3)
    return write_glamm(tmp_path_factory.mktemp("glamm"), state), state


def test_glamm_release_with_clip_maps_bit_exactly_and_loads_strictly(glamm_release, tmp_path: Path) -> None:
    folder, state = glamm_release
    clip = tiny_clip()
    write_single(tmp_path / "clip", clip.state_dict(), "safetensors")
    report = MappingReport()
    parts = convert([("glamm", folder, GLAMM), ("clip", tmp_path / "clip", CLIP)], report)

    # Every mapped tensor is its source, unchanged (values and dtype).
    clip_state = clip.state_dict()
    for target, record in report.mapped.items():
        source = state[record.key] if record.source == "glamm" else clip_state[record.key]
        tensor = parts[record.component][target]
        assert tensor.dtype == source.dtype and torch.equal(tensor, source), target
    assert parts["llava"]["model.language_model.layers.1.self_attn.q_proj.weight"].dtype == torch.bfloat16
    assert parts["sam"]["mask_decoder.mask_tokens.weight"].dtype == torch.float32

    # Dropped with reasons, unknown reported, nothing silently lost.
    dropped = {r.key: r.component for r in report.dropped}
    region = [k for k in state if k.startswith("model.region_encoder.")]
    assert region and all(dropped[k] == "region_encoder" for k in region)
    assert dropped["model.layers.0.self_attn.rotary_emb.inv_freq"] == "rotary"
    assert any(r.component == "clip_text" for r in report.dropped)
    assert [(r.source, r.key) for r in report.unmapped] == [("glamm", UNKNOWN_KEY)]
    seen = len(report.mapped) + len(report.dropped) + len(report.unmapped)
    assert seen == len(state) + len(clip_state)

    # Token rows move by string into PPCR's ids, then everything loads strictly.
    llava, sam, head = tiny_llava(PPCR_ROWS, seed=5), tiny_sam(seed=5), semantic_proj()
    assert report.expect(expected_targets(llava, sam, head)) == []
    src_vocab = read_added_tokens(folder)
    assert src_vocab == GLAMM_VOCAB
    for target in TOKEN_ROW_TARGETS:
        remap = remap_added_token_rows(
            parts["llava"][target], src_vocab, PPCR_VOCAB, ["[SEG]", "<im_start>", "<im_end>"], base_size=BASE_VOCAB,
            dst_rows=PPCR_ROWS,
        )
        parts["llava"][target] = remap.matrix
        source = state["model.embed_tokens.weight" if "embed" in target else "lm_head.weight"]
        assert torch.equal(remap.matrix[PPCR_VOCAB["[SEG]"]], source[GLAMM_VOCAB["[SEG]"]])
    llava.load_state_dict(parts["llava"], strict=True)
    sam.load_state_dict(parts["sam"], strict=True)
    head.load_state_dict(parts["semantic_proj"], strict=True)
    assert torch.equal(head.semantic_proj[2].weight, state["model.text_hidden_fcs.0.2.weight"])
    assert torch.equal(
        sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix,
        state["model.grounding_encoder.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"],
    )
    assert torch.equal(
        llava.model.vision_tower.embeddings.patch_embedding.weight,
        clip_state["vision_model.embeddings.patch_embedding.weight"],
    )

    saved = ConversionReport(mapping=report, tokens=remap, sources={"glamm": str(folder)}).save(tmp_path / "r.json")
    assert '"region_encoder"' in saved.read_text() and UNKNOWN_KEY in saved.read_text()


def test_glamm_without_clip_reports_the_vision_tower_missing(glamm_release) -> None:
    folder, _ = glamm_release
    report = MappingReport()
    convert([("glamm", folder, GLAMM)], report)
    missing = report.expect(expected_targets(tiny_llava(PPCR_ROWS), tiny_sam(), semantic_proj()))
    assert missing and all(name.startswith("model.vision_tower.") for name in missing)
    assert "model.vision_tower.embeddings.patch_embedding.weight" in missing
    assert any(line.startswith("unmapped glamm:" + UNKNOWN_KEY) for line in report.problems())


def test_glamm_with_its_own_vision_tower_needs_no_clip(tmp_path: Path) -> None:
    glamm = GlammLike(with_vision_tower=True, seed=3)
    state = glamm.released_state_dict()
    folder = write_glamm(tmp_path / "glamm", state, shards=2)
    report = MappingReport()
    parts = convert([("glamm", folder, GLAMM)], report)
    llava = tiny_llava(BASE_VOCAB + len(GLAMM_VOCAB))
    assert report.expect(set(llava.state_dict())) == []
    llava.load_state_dict(parts["llava"], strict=True)
    source = "model.vision_tower.vision_tower.vision_model.encoder.layers.1.mlp.fc2.weight"
    assert torch.equal(llava.model.vision_tower.encoder.layers[1].mlp.fc2.weight, state[source].float())
    assert parts["llava"]["model.vision_tower.encoder.layers.1.mlp.fc2.weight"].dtype == torch.bfloat16


def test_llava_hf_saved_by_transformers_round_trips(tmp_path: Path) -> None:
    source = tiny_llava(PPCR_ROWS, seed=7)
    source.save_pretrained(tmp_path / "llava", max_shard_size="20KB")
    assert (tmp_path / "llava" / "model.safetensors.index.json").is_file()
    report = MappingReport()
    parts = convert([("llava", tmp_path / "llava", LLAVA_HF)], report)
    target = tiny_llava(PPCR_ROWS, seed=8)
    assert report.expect(set(target.state_dict())) == [] and not report.unmapped
    target.load_state_dict(parts["llava"], strict=True)
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name


def test_sam_pth_maps_to_itself(tmp_path: Path) -> None:
    sam = tiny_sam(seed=2)
    torch.save(sam.state_dict(), tmp_path / "sam_vit_b.pth")
    report = MappingReport()
    parts = convert([("sam", tmp_path / "sam_vit_b.pth", SAM)], report)
    fresh = tiny_sam(seed=9)
    fresh.load_state_dict(parts["sam"], strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in sam.state_dict().items())


@pytest.mark.parametrize(
    ("key", "target", "component"),
    [
        ("model.layers.3.self_attn.q_proj.weight", "model.language_model.layers.3.self_attn.q_proj.weight", "llava"),
        ("base_model.model.model.layers.3.mlp.down_proj.weight", "model.language_model.layers.3.mlp.down_proj.weight", "llava"),
        ("base_model.model.lm_head.weight", "lm_head.weight", "llava"),
        ("model.mm_projector.0.bias", "model.multi_modal_projector.linear_1.bias", "llava"),
        ("model.mm_projector.2.weight", "model.multi_modal_projector.linear_2.weight", "llava"),
        ("model.grounding_encoder.image_encoder.blocks.7.attn.rel_pos_h", "image_encoder.blocks.7.attn.rel_pos_h", "sam"),
        ("model.text_hidden_fcs.0.0.bias", "semantic_proj.0.bias", "semantic_proj"),
        ("model.text_hidden_fcs.0.2.weight", "semantic_proj.2.weight", "semantic_proj"),
        ("model.region_encoder.roi_align.flatten_linear.weight", None, "region_encoder"),
        ("model.layers.0.self_attn.rotary_emb.inv_freq", None, "rotary"),
    ],
)
def test_glamm_rule_table(key: str, target: str | None, component: str) -> None:
    decision = map_key(key)
    assert decision is not None and decision.target == target and decision.component == component
    assert decision.dropped == (target is None) and (target is not None or decision.reason)


def test_unknown_glamm_keys_are_not_guessed() -> None:
    for key in ("model.text_hidden_fcs.0.1.weight", "model.mm_projector.1.weight", "model.grounding_encoder.neck.0.weight"):
        assert map_key(key) is None


@pytest.mark.parametrize(
    ("key", "target"),
    [
        ("language_model.model.layers.0.self_attn.v_proj.weight", "model.language_model.layers.0.self_attn.v_proj.weight"),
        ("language_model.lm_head.weight", "lm_head.weight"),
        ("vision_tower.vision_model.encoder.layers.0.mlp.fc1.bias", "model.vision_tower.encoder.layers.0.mlp.fc1.bias"),
        ("vision_tower.post_layernorm.weight", "model.vision_tower.post_layernorm.weight"),
        ("multi_modal_projector.linear_2.bias", "model.multi_modal_projector.linear_2.bias"),
        ("model.language_model.norm.weight", "model.language_model.norm.weight"),
        ("vision_tower.vision_model.embeddings.position_ids", None),
    ],
)
def test_llava_hf_rule_table(key: str, target: str | None) -> None:
    decision = LLAVA_HF.map_key(key)
    assert decision is not None and decision.target == target


def test_wrong_architecture_is_refused_before_reading(glamm_release, tmp_path: Path) -> None:
    folder, _ = glamm_release
    llava = tiny_llava(PPCR_ROWS)
    llava.save_pretrained(tmp_path / "llava")
    with pytest.raises(CheckpointError) as error:
        check_layout(checkpoint_keys(tmp_path / "llava"), GLAMM, "ckpt", KNOWN_LAYOUTS)
    assert str(error.value) == "ckpt is a llava-hf checkpoint, not a GLaMM checkpoint"
    with pytest.raises(CheckpointError) as error:
        check_layout(checkpoint_keys(folder), LLAVA_HF, "ckpt", KNOWN_LAYOUTS)
    assert str(error.value) == "ckpt is a GLaMM checkpoint, not a llava-hf checkpoint"

    resnet = {"conv1.weight": torch.zeros(2, 3, 3, 3), "fc.weight": torch.zeros(2, 2)}
    write_single(tmp_path / "resnet", resnet, "safetensors")
    with pytest.raises(CheckpointError) as error:
        check_layout(checkpoint_keys(tmp_path / "resnet"), GLAMM, "ckpt", KNOWN_LAYOUTS)
    assert str(error.value).startswith("ckpt does not look like a GLaMM checkpoint (first key: conv1.weight)")
    assert "\n" not in str(error.value)
    assert identify_layout(checkpoint_keys(folder)) is GLAMM
    assert identify_layout(list(resnet)) is None


def test_unmerged_lora_checkpoint_is_refused() -> None:
    keys = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.lora_A.default.weight"]
    with pytest.raises(CheckpointError) as error:
        check_layout(keys, GLAMM, "ckpt", KNOWN_LAYOUTS)
    assert "unmerged LoRA weights" in str(error.value)


def test_two_sources_for_one_target_is_an_error(glamm_release, tmp_path: Path) -> None:
    glamm = GlammLike(with_vision_tower=True, seed=4)
    write_glamm(tmp_path / "glamm", glamm.released_state_dict(), shards=1)
    write_single(tmp_path / "clip", tiny_clip().state_dict(), "safetensors")
    with pytest.raises(CheckpointError) as error:
        convert([("glamm", tmp_path / "glamm", GLAMM), ("clip", tmp_path / "clip", CLIP)], MappingReport())
    assert "is provided twice" in str(error.value)


def test_glamm_token_ids_match_the_reference() -> None:
    assert GLAMM_ADDED_TOKENS["[SEG]"] == 32004 and GLAMM_ADDED_TOKENS["<bbox>"] == 32002
    assert sorted(GLAMM_ADDED_TOKENS.values()) == list(range(32000, 32007))
