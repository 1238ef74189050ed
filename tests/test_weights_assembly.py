"""The two recipes of ``ppcr prepare weights`` on tiny checkpoints in the real layouts.

``load_glamm``: GranD base + RefSeg heads + CLIP, semantic adapter by SVD; ``load_llava``: llava-hf
+ SAM. The modules are tiny instances of the real classes PPCR builds on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ppcr.errors import CheckpointError
from ppcr.weights import assembly
from ppcr.weights.assembly import load_glamm, load_llava
from tests.weights_builders import (
    BASE_VOCAB,
    GLAMM_VOCAB,
    PPCR_ROWS,
    PPCR_VOCAB,
    GlammLike,
    glamm_release_pair,
    semantic_proj,
    tiny_clip,
    tiny_llava,
    tiny_sam,
    write_glamm,
    write_single,
)

RANK, ALPHA = 8, 16


def glamm_pair(tmp_path: Path) -> tuple[Path, Path, dict, dict]:
    """GranD-like and RefSeg-like checkpoints: RefSeg = GranD + rank-8 q/v deltas (alpha 16) +
    full changes of the mask decoder, text_hidden_fcs, embed_tokens and lm_head (as GLaMM trains)."""
    grand = GlammLike(with_vision_tower=False, seed=0)
    # fp32 storage here so the recovered delta is exact; the bf16 release is tested end to end.
    grand_state, refseg_state = glamm_release_pair(dict(grand.state_dict()), rank=RANK, alpha=ALPHA)
    return (
        write_glamm(tmp_path / "grand", grand_state, shards=2),
        write_glamm(tmp_path / "refseg", refseg_state, shards=3),
        grand_state,
        refseg_state,
    )


def ppcr_modules(seed: int = 5) -> dict[str, torch.nn.Module]:
    head = semantic_proj()
    return {"llava": tiny_llava(PPCR_ROWS, seed=seed), "sam": tiny_sam(seed=seed), "semantic_proj": head}


@pytest.mark.parametrize("base_rows_from", ["refseg", "grand"])
def test_load_glamm_builds_the_papers_initialisation(tmp_path: Path, base_rows_from: str) -> None:
    from peft import PeftModel

    grand_dir, refseg_dir, grand, refseg = glamm_pair(tmp_path)
    clip = tiny_clip()
    write_single(tmp_path / "clip", clip.state_dict(), "safetensors")
    modules = ppcr_modules()
    report = load_glamm(
        modules, grand=grand_dir, refseg=refseg_dir, clip=tmp_path / "clip", ppcr_vocab=PPCR_VOCAB,
        adapter_dir=tmp_path / "out" / "semantic", rank=RANK, alpha=ALPHA, base_size=BASE_VOCAB,
        base_rows_from=base_rows_from,
    )
    llava, sam, head = modules["llava"], modules["sam"], modules["semantic_proj"]
    assert report.mapping.missing == [] and report.mapping.unmapped == []

    # Base from GranD, heads from RefSeg, CLIP from the CLIP source.
    sam_prefix = "model.grounding_encoder."
    pairs = [
        (llava.model.language_model.layers[1].self_attn.q_proj.weight, grand["model.layers.1.self_attn.q_proj.weight"]),
        (llava.model.multi_modal_projector.linear_1.weight, grand["model.mm_projector.0.weight"]),
        (sam.image_encoder.neck[0].weight, grand[sam_prefix + "image_encoder.neck.0.weight"]),
        (sam.mask_decoder.mask_tokens.weight, refseg[sam_prefix + "mask_decoder.mask_tokens.weight"]),
        (head.semantic_proj[0].weight, refseg["model.text_hidden_fcs.0.0.weight"]),
        (llava.model.vision_tower.post_layernorm.weight, clip.state_dict()["vision_model.post_layernorm.weight"]),
    ]
    assert all(torch.equal(loaded, source) for loaded, source in pairs)
    assert not torch.equal(sam.mask_decoder.mask_tokens.weight, grand[sam_prefix + "mask_decoder.mask_tokens.weight"])
    not_taken = [r for r in report.mapping.dropped if r.reason.startswith("not taken")]
    assert any(r.source == "grand" and r.key.startswith(sam_prefix + "mask_decoder.") for r in not_taken)

    # Token rows: [SEG] from RefSeg moved to PPCR's id; base rows from the chosen checkpoint.
    base_source = refseg if base_rows_from == "refseg" else grand
    token_matrices = [("model.language_model.embed_tokens.weight", "model.embed_tokens.weight"), ("lm_head.weight",) * 2]
    for target, key in token_matrices:
        matrix = llava.state_dict()[target]
        assert torch.equal(matrix[:BASE_VOCAB], base_source[key][:BASE_VOCAB])
        assert torch.equal(matrix[PPCR_VOCAB["[SEG]"]], refseg[key][GLAMM_VOCAB["[SEG]"]])
        assert torch.equal(matrix[PPCR_VOCAB["<im_end>"]], refseg[key][GLAMM_VOCAB["<im_end>"]])
    assert report.tokens.carried["[SEG]"] == (GLAMM_VOCAB["[SEG]"], PPCR_VOCAB["[SEG]"])

    # The semantic adapter on the GranD base reproduces RefSeg's q/v projections.
    summary = report.to_dict()["adapters"]["semantic"]
    assert summary["matrices"] == 4 and summary["max_relative_error"] < 1e-5
    adapter = str(tmp_path / "out" / "semantic")
    peft_model = PeftModel.from_pretrained(llava, adapter, adapter_name="semantic").eval()
    hidden = torch.randn(3, 16)
    with torch.no_grad():
        for layer in (0, 1):
            for proj in ("q_proj", "v_proj"):
                name = f"model.language_model.layers.{layer}.self_attn.{proj}"
                expected = hidden @ refseg[f"model.layers.{layer}.self_attn.{proj}.weight"].T
                got = peft_model.base_model.model.get_submodule(name)(hidden)
                assert torch.allclose(got, expected, atol=1e-5), name
    config = json.loads((tmp_path / "out" / "semantic" / "adapter_config.json").read_text())
    assert config["r"] == RANK and config["lora_alpha"] == ALPHA and config["lora_dropout"] == 0.05

    saved = report.save(tmp_path / "out" / "conversion_report.json")
    data = json.loads(saved.read_text())
    assert data["mapping"]["counts"]["dropped_by_component"]["region_encoder"] > 0
    assert data["tokens"]["carried"]["[SEG]"]["ppcr_id"] == PPCR_VOCAB["[SEG]"]


def test_load_glamm_without_clip_fails_before_reading_any_tensor(tmp_path: Path, monkeypatch) -> None:
    grand_dir, refseg_dir, _, _ = glamm_pair(tmp_path)
    modules = ppcr_modules()
    before = {k: v.clone() for k, v in modules["llava"].state_dict().items()}
    monkeypatch.setattr(assembly, "iter_tensors", lambda *_: pytest.fail("tensor data was read"))
    with pytest.raises(CheckpointError) as error:
        load_glamm(
            modules, grand=grand_dir, refseg=refseg_dir, clip=None, ppcr_vocab=PPCR_VOCAB,
            adapter_dir=tmp_path / "semantic", base_size=BASE_VOCAB,
        )
    assert "parameters would come from no source, e.g. model.vision_tower." in str(error.value)
    assert "--clip" in error.value.hint
    assert all(torch.equal(v, before[k]) for k, v in modules["llava"].state_dict().items())
    assert not (tmp_path / "semantic").exists()


def test_load_glamm_checks_the_tokenizers_before_reading_any_tensor(tmp_path: Path, monkeypatch) -> None:
    grand_dir, refseg_dir, _, _ = glamm_pair(tmp_path)
    monkeypatch.setattr(assembly, "iter_tensors", lambda *_: pytest.fail("tensor data was read"))
    vocab = {t: i for t, i in PPCR_VOCAB.items() if t != "[SEG]"}
    with pytest.raises(CheckpointError, match=r"token \[SEG\] is not in the PPCR tokenizer"):
        load_glamm(
            ppcr_modules(), grand=grand_dir, refseg=refseg_dir, clip=None, ppcr_vocab=vocab,
            adapter_dir=tmp_path / "semantic", base_size=BASE_VOCAB,
        )


def test_load_glamm_refuses_a_llava_checkpoint_as_grand(tmp_path: Path) -> None:
    _, refseg_dir, _, _ = glamm_pair(tmp_path)
    tiny_llava(PPCR_ROWS).save_pretrained(tmp_path / "llava")
    with pytest.raises(CheckpointError, match="is a llava-hf checkpoint, not a GLaMM checkpoint"):
        load_glamm(
            ppcr_modules(), grand=tmp_path / "llava", refseg=refseg_dir, clip=None, ppcr_vocab=PPCR_VOCAB,
            adapter_dir=tmp_path / "semantic", base_size=BASE_VOCAB,
        )


def test_load_llava_with_sam(tmp_path: Path) -> None:
    source = tiny_llava(PPCR_ROWS, seed=3)
    source.save_pretrained(tmp_path / "llava", max_shard_size="30KB")
    decoder = {"32": {"content": "<image>", "special": True}, "33": {"content": "<pad>", "special": True}}
    (tmp_path / "llava" / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    sam_source = tiny_sam(seed=3)
    torch.save(sam_source.state_dict(), tmp_path / "sam_vit_b.pth")
    modules = ppcr_modules(seed=8)
    report = load_llava(
        modules, llava=tmp_path / "llava", sam=tmp_path / "sam_vit_b.pth", ppcr_vocab=PPCR_VOCAB,
        base_size=BASE_VOCAB,
    )
    assert report.mapping.missing == [] and report.mapping.unmapped == []
    got, want = modules["llava"].state_dict(), source.state_dict()
    for name, value in want.items():
        if name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(got[name][: BASE_VOCAB + 2], value[: BASE_VOCAB + 2])  # base + <image>, <pad>
            mean = value[:BASE_VOCAB].double().mean(0).to(value.dtype)
            assert torch.equal(got[name][PPCR_VOCAB["[SEG]"]], mean)
        else:
            assert torch.equal(got[name], value), name
    assert all(torch.equal(modules["sam"].state_dict()[k], v) for k, v in sam_source.state_dict().items())
    assert set(report.tokens.carried) == {"<image>", "<pad>"}
    assert "[SEG]" in report.tokens.initialised
