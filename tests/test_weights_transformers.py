"""The transformers range PPCR declares is the one these tests run on, and the weight loaders fill
the parameter names of the modules they are given, whatever transformers spelled them.

The rule tables write transformers 5 names; a LLaVA built by transformers 4.52-4.57 nests its CLIP
modules under ``model.vision_tower.vision_model.``. Here such a skeleton is rebuilt by hand (the
transformers 5 tower moved one level down) and the GLaMM and llava-hf conversions must fill it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from ppcr.errors import CheckpointError
from ppcr.weights import assembly
from ppcr.weights.assembly import load_glamm, load_llava
from tests.weights_builders import (
    BASE_VOCAB,
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

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def declared_transformers():
    """The ``transformers`` requirement of pyproject.toml's dependencies."""
    from packaging.requirements import Requirement

    text = PYPROJECT.read_text(encoding="utf-8")
    dependencies = text[text.index("dependencies = ["):]
    dependencies = dependencies[: dependencies.index("]")]
    (line,) = re.findall(r'"(transformers[^"]*)"', dependencies)
    return Requirement(line)


def test_the_declared_transformers_range_is_5x_and_installed():
    import transformers

    specifier = declared_transformers().specifier
    assert specifier.contains(transformers.__version__), (transformers.__version__, str(specifier))
    # transformers 4.x has other module names, config keys (rope_parameters) and cache keywords;
    # the code is tested on 5.x only, so 4.x must not satisfy the requirement, nor an untested 6.
    assert not any(specifier.contains(v) for v in ("4.52.0", "4.57.3", "6.0.0"))
    assert specifier.contains("5.0.0")


class TowerWithVisionModel(nn.Module):
    """transformers 4.x's CLIPVisionModel: the encoder one ``vision_model.`` level down."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.vision_model = tower


def llava_with_old_tower_names(seed: int = 5) -> nn.Module:
    llava = tiny_llava(PPCR_ROWS, seed=seed)
    llava.model.vision_tower = TowerWithVisionModel(llava.model.vision_tower)
    names = list(llava.state_dict())
    assert any(n.startswith("model.vision_tower.vision_model.embeddings.") for n in names)
    return llava


def test_glamm_conversion_fills_a_skeleton_that_spells_the_vision_tower_differently(tmp_path):
    grand, refseg = glamm_release_pair(GlammLike(with_vision_tower=False, seed=0).released_state_dict())
    clip = tiny_clip()
    write_single(tmp_path / "clip", clip.state_dict(), "safetensors")
    llava = llava_with_old_tower_names()
    modules = {"llava": llava, "sam": tiny_sam(seed=5), "semantic_proj": semantic_proj()}
    report = load_glamm(
        modules, grand=write_glamm(tmp_path / "grand", grand), refseg=write_glamm(tmp_path / "refseg", refseg),
        clip=tmp_path / "clip", ppcr_vocab=PPCR_VOCAB, adapter_dir=tmp_path / "semantic", base_size=BASE_VOCAB,
    )
    assert report.mapping.missing == [] and report.mapping.unmapped == []
    state = llava.state_dict()
    for key, value in clip.state_dict().items():
        if key.startswith("vision_model.") and "position_ids" not in key:
            assert torch.equal(state["model.vision_tower." + key], value), key
    assert report.mapping.mapped["model.vision_tower.vision_model.post_layernorm.weight"].source == "clip"


def test_llava_conversion_fills_a_skeleton_that_spells_the_vision_tower_differently(tmp_path):
    source = tiny_llava(PPCR_ROWS, seed=3)
    source.save_pretrained(tmp_path / "llava")  # written by transformers 5: no vision_model level
    decoder = {"32": {"content": "<image>", "special": True}, "33": {"content": "<pad>", "special": True}}
    (tmp_path / "llava" / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    sam = tiny_sam(seed=3)
    torch.save(sam.state_dict(), tmp_path / "sam.pth")
    llava = llava_with_old_tower_names(seed=8)
    modules = {"llava": llava, "sam": tiny_sam(seed=8)}
    report = load_llava(modules, llava=tmp_path / "llava", sam=tmp_path / "sam.pth", ppcr_vocab=PPCR_VOCAB,
                        base_size=BASE_VOCAB)
    assert report.mapping.missing == [] and report.mapping.unmapped == []
    state = llava.state_dict()
    for key, value in source.state_dict().items():
        if key.startswith("model.vision_tower."):
            assert torch.equal(state[key.replace("model.vision_tower.", "model.vision_tower.vision_model.")], value)


def test_a_tower_that_does_not_fit_is_not_blamed_on_a_missing_clip(tmp_path, monkeypatch):
    """The hint says to pass --clip only when no source has a vision tower at all."""

    grand, refseg = glamm_release_pair(GlammLike(with_vision_tower=False, seed=0).released_state_dict())
    grand_dir, refseg_dir = write_glamm(tmp_path / "grand", grand), write_glamm(tmp_path / "refseg", refseg)
    one_layer_short = {k: v for k, v in tiny_clip().state_dict().items() if ".layers.1." not in k}
    write_single(tmp_path / "clip", one_layer_short, "safetensors")
    monkeypatch.setattr(assembly, "iter_tensors", lambda *_: pytest.fail("tensor data was read"))
    for clip, hint in ((tmp_path / "clip", "check that the sources match"), (None, "--clip")):
        modules = {"llava": llava_with_old_tower_names(), "sam": tiny_sam(seed=5), "semantic_proj": semantic_proj()}
        with pytest.raises(CheckpointError, match="would come from no source, e.g. model.vision_tower.") as error:
            load_glamm(modules, grand=grand_dir, refseg=refseg_dir, clip=clip, ppcr_vocab=PPCR_VOCAB,
                       adapter_dir=tmp_path / "semantic", base_size=BASE_VOCAB)
        assert hint in error.value.hint
