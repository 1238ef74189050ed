"""Checkpoints and weight loading: exact round trips, peft layout, real-layout base weights,
one-line errors for broken files, atomic writes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from ppcr.config.schema import InitSpec, Recipe
from ppcr.errors import CheckpointError, PPCRError
from ppcr.modeling import checkpoint as ckpt
from ppcr.modeling.build import build_model
from ppcr.modeling.model import PPCRModel
from ppcr.modeling.processor import PPCRProcessor, PPCRSample
from tests.tiny_recipes import tiny_recipe as shared_tiny_recipe


def tiny_recipe(init: InitSpec | None = None, **model) -> Recipe:
    return shared_tiny_recipe(seed=5, init=init, **model)


def samples() -> list[PPCRSample]:
    rng = np.random.default_rng(1)
    image = (rng.random((70, 110, 3)) * 255).astype(np.uint8)
    other = (rng.random((120, 90, 3)) * 255).astype(np.uint8)
    return [
        PPCRSample(image, "the red circle on the left", image_key=0),
        PPCRSample(image, "the small blue star", image_key=0),
        PPCRSample(other, "the green hexagon next to the big square", image_key=1),
    ]


def perturb(model: PPCRModel) -> None:
    """Move every trainable tensor away from its initial value (LoRA B starts at zero)."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, parameter in model.trainable_parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)


def outputs(model: PPCRModel):
    model.eval()
    batch = PPCRProcessor.from_model(model)(samples())
    with torch.no_grad():
        return batch, model.segment(model.encode_images(batch.images), batch.text)


def assert_same_outputs(a, b) -> None:
    assert torch.equal(a.h_sem, b.h_sem)
    assert (a.boxes is None and b.boxes is None) or torch.equal(a.boxes, b.boxes)
    assert all(torch.equal(x, y) for x, y in zip(a.mask_logits, b.mask_logits, strict=True))
    assert torch.equal(a.scores, b.scores)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model = build_model(tiny_recipe())
    perturb(model)
    path = tmp_path_factory.mktemp("ckpt") / "run"
    model.save_pretrained(path, recipe={"name": "test"})
    return model, path


def test_round_trip_is_exact_and_in_the_documented_layout(trained):
    model, path = trained
    for rel in [
        "config.json",
        "semantic/adapter_config.json",
        "semantic/adapter_model.safetensors",
        "spatial/adapter_config.json",
        "spatial/adapter_model.safetensors",
        "heads.safetensors",
        "tokenizer/tokenizer.json",
        "base/llava/config.json",
        "base/sam.safetensors",
    ]:
        assert (path / rel).is_file(), rel
    config = json.loads((path / "config.json").read_text())
    assert config["base"]["kind"] == "stored" and config["model"]["spatial_prompt"] == "semantic"
    assert config["recipe"] == {"name": "test"}
    loaded = PPCRModel.from_pretrained(path)
    assert set(loaded.state_dict()) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert_same_outputs(outputs(model)[1], outputs(loaded)[1])


def test_head_norm_statistics_round_trip_and_old_checkpoints_load_without_them(trained, tmp_path):
    model = build_model(tiny_recipe(head_norm="batch"))
    perturb(model)
    with torch.no_grad():
        for norm in (model.h_sem_norm, model.p_box_norm):
            norm.norm.running_mean.normal_()
            norm.norm.running_var.uniform_(0.5, 2.0)
    model.save_pretrained(tmp_path / "normed")
    loaded = PPCRModel.from_pretrained(tmp_path / "normed")
    assert loaded.spec.head_norm == "batch"
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert_same_outputs(outputs(model)[1], outputs(loaded)[1])
    # The statistics change the outputs: they are really used.
    loaded.h_sem_norm.norm.running_mean.zero_()
    assert not torch.equal(outputs(model)[1].mask_logits[0], outputs(loaded)[1].mask_logits[0])
    # A checkpoint without the norms (the paper's setting) has none.
    plain = PPCRModel.from_pretrained(trained[1])
    assert plain.h_sem_norm is None and plain.p_box_norm is None


@pytest.mark.filterwarnings("ignore::FutureWarning")  # raised inside peft/transformers
def test_adapters_are_readable_by_peft_itself(trained):
    from peft import PeftModel
    from transformers import LlavaForConditionalGeneration

    model, path = trained
    base = LlavaForConditionalGeneration.from_pretrained(path / "base" / "llava")
    peft_model = PeftModel.from_pretrained(base, path / "semantic", adapter_name="semantic")
    peft_model.load_adapter(path / "spatial", adapter_name="spatial")
    theirs = dict(peft_model.named_parameters())
    for adapter in ("semantic", "spatial"):
        for name, parameter in model.adapters.parameters(adapter).items():
            assert torch.equal(theirs[name], parameter), name


def test_saving_again_replaces_the_directory_atomically(trained, tmp_path, monkeypatch):
    model, _ = trained
    target = tmp_path / "ckpt"
    model.save_pretrained(target)
    before = (target / "heads.safetensors").read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ckpt, "heads_state", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        model.save_pretrained(target)
    assert (target / "heads.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporaries left behind


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "config.json").unlink(), "no config.json"),
        (lambda p: (p / "config.json").write_text("{broken"), "cannot read"),
        (lambda p: (p / "heads.safetensors").write_bytes(b"garbage"), "cannot read"),
        (lambda p: (p / "spatial" / "adapter_model.safetensors").unlink(), "missing"),
        (lambda p: (p / "base" / "sam.safetensors").write_bytes(b"xx"), "cannot read SAM"),
    ],
)
def test_damaged_checkpoints_raise_one_line_checkpoint_errors(trained, tmp_path, damage, message):
    import shutil

    model, path = trained
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    damage(copy)
    with pytest.raises(CheckpointError) as info:
        PPCRModel.from_pretrained(copy)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_heads_with_a_missing_tensor_are_refused(trained, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    _, path = trained
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    state = load_file(str(copy / "heads.safetensors"))
    state.pop("semantic_proj.0.weight")
    save_file(state, str(copy / "heads.safetensors"))
    with pytest.raises(CheckpointError, match="missing key"):
        PPCRModel.from_pretrained(copy)


def test_init_from_checkpoint_with_another_box_head_keeps_the_rest(trained):
    model, path = trained
    recipe = tiny_recipe(init=InitSpec(source="checkpoint", checkpoint=str(path)), spatial_head="attn")
    other = build_model(recipe)
    assert type(other.box_head).__name__ == "AttnBoxHead"
    assert torch.equal(other.semantic_proj[0].weight, model.semantic_proj[0].weight)
    assert torch.equal(other.sam.mask_decoder.iou_token.weight, model.sam.mask_decoder.iou_token.weight)
    theirs = other.adapters.parameters("spatial")
    for name, parameter in model.adapters.parameters("spatial").items():
        assert torch.equal(theirs[name], parameter), name
    bad = tiny_recipe(init=InitSpec(source="checkpoint", checkpoint=str(path)), sam="vit_b")
    with pytest.raises(CheckpointError, match="model.sam"):
        build_model(bad)


def test_glamm_source_points_to_the_conversion_command():
    with pytest.raises(PPCRError) as info:
        build_model(tiny_recipe(init=InitSpec(source="glamm")))
    assert "ppcr prepare weights" in (info.value.hint or "")


# ----------------------------------------------------------------------------- real layouts


@pytest.fixture(scope="module")
def llava_dir_and_sam(tmp_path_factory):
    """A tiny llava-hf-style directory (save_pretrained) and a tiny official-layout SAM .pth."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from ppcr.modeling.sam import build_sam, sam_architecture, sam_state_dict
    from ppcr.modeling.tokenizer import train_tiny_tokenizer

    root = tmp_path_factory.mktemp("weights")
    tokenizer = train_tiny_tokenizer(512)  # like llava-hf: <image> and <pad>, no PPCR tokens yet
    torch.manual_seed(11)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, patch_size=8, projection_dim=32,
        ),
        text_config=LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=len(tokenizer), max_position_embeddings=256,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=16,
    )
    llava = LlavaForConditionalGeneration(config)
    llava_dir = root / "llava-tiny-hf"
    llava.save_pretrained(llava_dir)
    tokenizer.save_pretrained(llava_dir)
    sam = build_sam(sam_architecture("tiny"))
    sam_path = root / "sam_tiny.pth"
    torch.save(sam_state_dict(sam), sam_path)
    return llava_dir, sam_path, llava.state_dict(), sam_state_dict(sam)


def test_llava_directory_and_sam_pth_load_through_the_real_code_path(llava_dir_and_sam, tmp_path):
    llava_dir, sam_path, llava_state, sam_state = llava_dir_and_sam
    recipe = tiny_recipe(init=InitSpec(source="llava", llava=str(llava_dir), sam_checkpoint=str(sam_path)))
    model = build_model(recipe)
    base = {k.replace(".base_layer.", "."): v for k, v in model.llava.state_dict().items() if "lora_" not in k}
    for key, value in llava_state.items():
        if key.endswith(("embed_tokens.weight", "lm_head.weight")):
            # Grown to hold the three PPCR tokens; the original rows are untouched.
            assert torch.equal(base[key][: value.shape[0]], value), key
            assert base[key].shape[0] >= value.shape[0] + 3
        else:
            assert torch.equal(base[key], value), key
    for key, value in model.sam.state_dict().items():
        assert torch.equal(value, sam_state[key]), key
    assert model.image_seq_length == 16 and model.hidden_size == 64

    # A public base is referenced, not copied (by a path relative to the checkpoint); the reload
    # rebuilds it from the reference.
    perturb(model)
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    relative = os.path.relpath(llava_dir.resolve(), (tmp_path / "ckpt").resolve())
    assert relative.startswith("../")
    assert config["base"] == {
        "kind": "reference", "llava": relative, "sam": os.path.relpath(sam_path.resolve(), (tmp_path / "ckpt").resolve())
    }
    assert not (tmp_path / "ckpt" / "base").exists()
    adapter_config = json.loads((tmp_path / "ckpt" / "semantic" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == relative
    assert_same_outputs(outputs(model)[1], outputs(PPCRModel.from_pretrained(tmp_path / "ckpt"))[1])


@pytest.fixture
def project_with_a_local_base(llava_dir_and_sam, tmp_path):
    """``project/bases/{llava,sam.pth}`` and ``project/checkpoints/run`` referring to them; the
    saved model and its outputs."""
    import shutil

    llava_dir, sam_path, _, _ = llava_dir_and_sam
    project = tmp_path / "project"
    shutil.copytree(llava_dir, project / "bases" / "llava")
    shutil.copy(sam_path, project / "bases" / "sam.pth")
    init = InitSpec(source="llava", llava=str(project / "bases" / "llava"), sam_checkpoint=str(project / "bases" / "sam.pth"))
    model = build_model(tiny_recipe(init=init))
    perturb(model)
    model.save_pretrained(project / "checkpoints" / "run")
    return project, outputs(model)[1]


def test_a_checkpoint_moved_together_with_its_local_base_still_loads(project_with_a_local_base, tmp_path):
    project, expected = project_with_a_local_base
    config = json.loads((project / "checkpoints" / "run" / "config.json").read_text())
    assert config["base"] == {"kind": "reference", "llava": "../../bases/llava", "sam": "../../bases/sam.pth"}
    for adapter in ("semantic", "spatial"):
        assert str(tmp_path) not in (project / "checkpoints" / "run" / adapter / "adapter_config.json").read_text()

    moved = project.rename(tmp_path / "elsewhere")  # the whole project, renamed
    loaded = PPCRModel.from_pretrained(moved / "checkpoints" / "run")
    assert_same_outputs(expected, outputs(loaded)[1])
    assert loaded.base.llava == str((moved / "bases" / "llava").resolve())

    # Saved again somewhere else, it points at the same base from its new place.
    loaded.save_pretrained(moved / "deeper" / "still" / "copy")
    again = json.loads((moved / "deeper" / "still" / "copy" / "config.json").read_text())
    assert again["base"]["llava"] == "../../../bases/llava"
    assert_same_outputs(expected, outputs(PPCRModel.from_pretrained(moved / "deeper" / "still" / "copy"))[1])


def test_old_checkpoints_with_absolute_base_paths_still_load(project_with_a_local_base):
    project, expected = project_with_a_local_base
    config_path = project / "checkpoints" / "run" / "config.json"
    config = json.loads(config_path.read_text())
    config["base"] = {"kind": "reference", "llava": str(project / "bases" / "llava"), "sam": str(project / "bases" / "sam.pth")}
    config_path.write_text(json.dumps(config))
    assert_same_outputs(expected, outputs(PPCRModel.from_pretrained(project / "checkpoints" / "run"))[1])


def test_a_checkpoint_moved_without_its_base_says_where_the_base_was_expected(project_with_a_local_base, tmp_path):
    project, _ = project_with_a_local_base
    alone = (project / "checkpoints" / "run").rename(tmp_path / "run")
    with pytest.raises(CheckpointError) as info:
        PPCRModel.from_pretrained(alone)
    message = info.value.message
    assert "refers to its base LLaVA at ../../bases/llava" in message and "which does not exist" in message
    assert "--copy-base" in info.value.hint


def test_store_base_makes_a_checkpoint_that_needs_nothing_else(project_with_a_local_base, tmp_path):
    import shutil

    project, expected = project_with_a_local_base
    model = PPCRModel.from_pretrained(project / "checkpoints" / "run")
    model.save_pretrained(tmp_path / "self-contained", store_base=True)
    shutil.rmtree(project)
    config = json.loads((tmp_path / "self-contained" / "config.json").read_text())
    assert config["base"] == {"kind": "stored", "llava": "./base/llava", "sam": "./base/sam.safetensors"}
    assert_same_outputs(expected, outputs(PPCRModel.from_pretrained(tmp_path / "self-contained"))[1])


def test_broken_llava_sources_raise_checkpoint_errors(llava_dir_and_sam, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    llava_dir, sam_path, _, _ = llava_dir_and_sam
    missing = tiny_recipe(init=InitSpec(source="llava", llava=str(tmp_path / "nowhere"), sam_checkpoint=str(sam_path)))
    with pytest.raises(CheckpointError):
        build_model(missing)
    no_sam = tiny_recipe(init=InitSpec(source="llava", llava=str(llava_dir), sam_checkpoint=None))
    with pytest.raises(CheckpointError, match="sam_checkpoint"):
        build_model(no_sam)
    damaged = tmp_path / "damaged"
    shutil.copytree(llava_dir, damaged)
    weights = damaged / "model.safetensors"
    state = load_file(str(weights))
    state.pop(next(k for k in state if "layers.1.self_attn.q_proj" in k))
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing"):
        build_model(tiny_recipe(init=InitSpec(source="llava", llava=str(damaged), sam_checkpoint=str(sam_path))))
    wrong_sam = tiny_recipe(
        init=InitSpec(source="llava", llava=str(llava_dir), sam_checkpoint=str(sam_path)), sam="vit_b"
    )
    with pytest.raises(CheckpointError, match="shape mismatch") as info:
        build_model(wrong_sam)
    assert "vit_b" in info.value.hint


def test_save_writes_the_given_state_dict_not_the_live_tensors(trained, tmp_path):
    model, _ = trained
    state = {k: v.clone() for k, v in model.state_dict().items()}
    head_key = "semantic_proj.0.weight"
    lora_key = next(k for k in state if "lora_B.spatial" in k)
    decoder_key = "sam.mask_decoder.iou_token.weight"
    for key in (head_key, lora_key, decoder_key):
        state[key] = state[key] + 1.0
    model.save_pretrained(tmp_path / "c", state_dict=state)
    loaded = PPCRModel.from_pretrained(tmp_path / "c").state_dict()
    for key in (head_key, lora_key, decoder_key):
        assert torch.equal(loaded[key], state[key]), key
        assert not torch.equal(model.state_dict()[key], state[key])  # the live model is untouched
    state.pop(head_key)
    with pytest.raises(CheckpointError, match="missing"):
        model.save_pretrained(tmp_path / "d", state_dict=state)


def test_the_build_recipe_is_saved_with_the_model(tmp_path):
    model = build_model(tiny_recipe(spatial_prompt="none"))
    model.save_pretrained(tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["recipe"]["seed"] == 5 and config["recipe"]["model"]["spatial_prompt"] == "none"
    assert not (tmp_path / "c" / "spatial").exists()
    loaded = PPCRModel.from_pretrained(tmp_path / "c")
    assert loaded.adapters.names == ("semantic",) and loaded.box_head is None
    assert_same_outputs(outputs(model)[1], outputs(loaded)[1])
