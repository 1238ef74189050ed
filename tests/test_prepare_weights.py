"""``prepare_weights`` on tiny checkpoints written in the real layouts, end to end.

The sources are tiny instances of the real classes at PPCR's tiny size (``TinySpec()``):
a GLaMM-GranD / GLaMM-RefSeg pair (sharded ``.bin`` + index, GLaMM's key names, bf16 LLM and fp32
SAM as GLaMM's merge script saves them, GLaMM's added tokens; RefSeg = GranD + a planted rank-8
q/v delta + full changes to the heads), a full CLIPModel, a llava-hf directory (safetensors
shards, save_pretrained) and SAM's ``.pth``. The converted directory must load with
``PPCRModel.from_pretrained`` and run inference and a training step.
"""

from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ppcr.config.schema import TinySpec
from ppcr.errors import CheckpointError, DataError, PPCRError
from ppcr.modeling.model import PPCRModel
from ppcr.modeling.prefix_cache import prefix_length
from ppcr.modeling.processor import PPCRProcessor, PPCRSample
from ppcr.weights.prepare import prepare_weights
from tests.weights_builders import (
    GLAMM_FULLY_TRAINED,
    GLAMM_LORA_KEY,
    glamm_release_pair,
    write_sharded,
    write_single,
)

TINY = TinySpec()
RANK, ALPHA = 8, 16
GLAMM_TOKENS = ["<im_start>", "<im_end>", "<bbox>", "<point>", "[SEG]", "<p>", "</p>"]

# GLaMM's conversation, written out by hand from groundingLMM's source (not produced by PPCR):
# model/llava/conversation.py conv_llava_v1 (this system prompt, roles USER / ASSISTANT,
# SeparatorStyle.TWO with sep " " and sep2 "</s>"), the begin_str "The <image> provides an overview
# of the picture.\n" of dataset/segm_datasets/RefCOCO_Segm_ds.py before the first question, and
# dataset/dataset.py replacing <image> by <im_start><image><im_end>. get_prompt() of one turn is
# system + " " + "USER: " + begin_str + question + " " + "ASSISTANT: " + answer + "</s>".
GLAMM_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
GLAMM_USER = GLAMM_SYSTEM + " USER: The <im_start><image><im_end> provides an overview of the picture.\n"
GLAMM_SEMANTIC_TURN = GLAMM_USER + "Can you segment the red circle in this image? ASSISTANT: It is [SEG].</s>"
GLAMM_SPATIAL_TURN = (
    GLAMM_USER + "Where is the target marked by <sem>? Please respond with a bounding box. ASSISTANT: It is [BOX].</s>"
)
LLAVA_HF_SEMANTIC_TURN = "USER: <image>\nCan you segment the red circle in this image? ASSISTANT: It is [SEG].</s>"
GLAMM_PROMPT_JSON = {
    "image_start_end": True,
    "system": GLAMM_SYSTEM,
    "image_text": "The <image> provides an overview of the picture.\n",
}
LLAVA_HF_PROMPT_JSON = {"image_start_end": False, "system": "", "image_text": "<image>\n"}


# --- tiny sources in the real layouts -------------------------------------------------------------


def llava_hf_tokenizer(vocab_size: int = 400):
    """A llava-hf-like tokenizer: a base vocabulary, then <image> and <pad> as the first added tokens."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    from ppcr.modeling.tokenizer import training_corpus

    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(training_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", padding_side="right"
    )
    tok.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    tok.add_special_tokens({"pad_token": "<pad>"})
    return tok


def text_config(vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=TINY.llm_hidden, intermediate_size=TINY.llm_intermediate,
        num_hidden_layers=TINY.llm_layers, num_attention_heads=TINY.llm_heads,
        num_key_value_heads=TINY.llm_heads, max_position_embeddings=256,
    )


def vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=TINY.clip_hidden, intermediate_size=TINY.clip_intermediate,
        num_hidden_layers=TINY.clip_layers, num_attention_heads=TINY.clip_heads,
        image_size=TINY.image_size, patch_size=TINY.clip_patch_size, projection_dim=TINY.clip_hidden,
    )


def tiny_sam(seed: int):
    from ppcr.modeling.sam import build_sam, sam_architecture

    torch.manual_seed(seed)
    return build_sam(sam_architecture("tiny", TINY))


class GlammLike(nn.Module):
    """GLaMMForCausalLM's module tree (as its model/GLaMM.py builds it) at PPCR's tiny size."""

    def __init__(self, base_vocab: int, seed: int = 0):
        super().__init__()
        from transformers import LlamaModel

        torch.manual_seed(seed)
        hidden, sam_dim = TINY.llm_hidden, TINY.sam_prompt_dim
        self.model = LlamaModel(text_config(base_vocab + len(GLAMM_TOKENS)))
        self.model.mm_projector = nn.Sequential(nn.Linear(TINY.clip_hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.model.grounding_encoder = tiny_sam(seed)
        self.model.text_hidden_fcs = nn.ModuleList(
            [nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, sam_dim), nn.Dropout(0.0))]
        )
        self.model.region_encoder = nn.Module()
        self.model.region_encoder.mlvl_fuse = nn.Linear(8, 8)
        self.model.region_encoder.roi_align = nn.Module()
        self.model.region_encoder.roi_align.updims = nn.Linear(8, hidden)
        self.lm_head = nn.Linear(hidden, base_vocab + len(GLAMM_TOKENS), bias=False)

    def released_state_dict(self) -> dict[str, torch.Tensor]:
        """As GLaMM's merge script saves it: LLM and projector bf16, SAM and heads fp32, old rotary buffer."""
        fp32 = ("model.grounding_encoder.", "model.text_hidden_fcs.", "model.region_encoder.")
        state = {
            key: value.detach().clone() if key.startswith(fp32) else value.detach().to(torch.bfloat16)
            for key, value in self.state_dict().items()
        }
        state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.arange(4, dtype=torch.float32)
        return state


def write_glamm(directory: Path, state: dict[str, torch.Tensor], base_vocab: int, shards: int) -> Path:
    write_sharded(directory, state, shards, "bin")
    vocab = {token: base_vocab + i for i, token in enumerate(GLAMM_TOKENS)}
    (directory / "added_tokens.json").write_text(json.dumps(vocab, indent=2))
    (directory / "config.json").write_text(json.dumps({"architectures": ["GLaMMForCausalLM"], "model_type": "llava"}))
    return directory


def glamm_pair(base_vocab: int) -> tuple[dict, dict]:
    """GranD and RefSeg as released: RefSeg = GranD (bf16 LLM) + rank-8 q/v LoRA (alpha 16) merged
    as GLaMM merged it, + full changes of the fully trained parts; frozen tensors bit-identical."""
    grand = GlammLike(base_vocab, seed=0).released_state_dict()
    return glamm_release_pair(grand, rank=RANK, alpha=ALPHA, head_scale=0.1)


def tiny_clip(seed: int = 3):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=40,
                max_position_embeddings=16, projection_dim=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision_config().to_dict())).eval()


def tiny_llava_hf(tok, seed: int = 4):
    from transformers import LlavaForConditionalGeneration

    from ppcr.modeling.build import vocab_rows
    from ppcr.modeling.llava import add_ppcr_tokens, tiny_llava_config

    probe = copy.deepcopy(tok)
    ids = add_ppcr_tokens(probe)  # only for the config's image / bos / eos / pad ids
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(tiny_llava_config(TINY, vocab_rows(len(probe)), ids)).eval()


def write_sources(root: Path) -> dict:
    """Every source checkpoint, as the user would have them on disk."""
    tok = llava_hf_tokenizer()
    base_vocab = int(tok.vocab_size)
    tokenizer_dir = root / "llava-tokenizer"
    tok.save_pretrained(tokenizer_dir)

    grand, refseg = glamm_pair(base_vocab)
    clip = tiny_clip()
    llava = tiny_llava_hf(tok)
    sam = tiny_sam(seed=9)
    llava.save_pretrained(root / "llava", max_shard_size="200KB")
    tok.save_pretrained(root / "llava")
    torch.save(sam.state_dict(), root / "sam_vit_tiny.pth")
    write_single(root / "clip", clip.state_dict(), "safetensors")
    return {
        "root": root,
        "tokenizer": tokenizer_dir,
        "base_vocab": base_vocab,
        "grand": write_glamm(root / "grand", grand, base_vocab, shards=2),
        "refseg": write_glamm(root / "refseg", refseg, base_vocab, shards=3),
        "grand_state": grand,
        "refseg_state": refseg,
        "clip": root / "clip",
        "clip_state": clip.state_dict(),
        "llava": root / "llava",
        "llava_state": llava.state_dict(),
        "sam": root / "sam_vit_tiny.pth",
        "sam_state": sam.state_dict(),
    }


def glamm_args(sources: dict) -> dict:
    return dict(base=sources["grand"], semantic=sources["refseg"], clip=sources["clip"],
                tokenizer=sources["tokenizer"], rank=RANK, alpha=ALPHA, size=TINY)


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    return write_sources(tmp_path_factory.mktemp("sources"))


@pytest.fixture(scope="module")
def glamm_out(sources, tmp_path_factory):
    lines: list[str] = []
    out = tmp_path_factory.mktemp("prepared") / "glamm-init"
    # --sam is accepted (the command line passes it) but GLaMM carries its own SAM.
    result = prepare_weights("glamm", out, progress=lines.append, sam=sources["sam"], **glamm_args(sources))
    return result, PPCRModel.from_pretrained(out), lines


@pytest.fixture(scope="module")
def llava_out(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "llava-init"
    result = prepare_weights("llava", out, llava=sources["llava"], sam=sources["sam"], size=TINY)
    return result, PPCRModel.from_pretrained(out)


def loaded(model: PPCRModel, target: str, component: str) -> torch.Tensor:
    """The loaded model's tensor for an assembly target name."""
    state = model.state_dict()
    if component == "sam":
        return state[f"sam.{target}"]
    if component == "semantic_proj":
        return state[target]
    name = f"llm.base_model.model.{target}"
    if name not in state:  # LoRA-wrapped q_proj / v_proj
        name = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
    return state[name]


def samples() -> list[PPCRSample]:
    rng = np.random.default_rng(0)
    image = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
    mask = np.zeros((40, 56), dtype=bool)
    mask[10:30, 5:25] = True
    return [
        PPCRSample(image, "the red circle", mask=mask, box_xyxy=(5, 10, 25, 30), image_key=0),
        PPCRSample(image, "the blue square on the right", mask=~mask, box_xyxy=(0, 0, 56, 40), image_key=0),
    ]


def runs_the_pipeline(model: PPCRModel) -> None:
    """Inference (encode once, segment) and one training forward + backward reaching every trainable part."""
    processor = PPCRProcessor.from_model(model)
    model.eval()
    batch = processor(samples())
    prediction = model.segment(model.encode_images(batch.images), batch.text)
    assert [tuple(m.shape) for m in prediction.mask_logits] == [(40, 56), (40, 56)]
    assert all(torch.isfinite(m).all() for m in prediction.mask_logits)
    assert prediction.boxes.shape == (2, 4)

    model.train()
    output = model(processor(samples(), rng=random.Random(0)))
    assert torch.isfinite(output.loss) and set(output.losses) == {"bce", "dice", "l1", "ce"}
    output.loss.backward()
    for adapter in ("semantic", "spatial"):
        grads = [p.grad for p in model.adapters.parameters(adapter).values()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), adapter
    for name, module in model.trainable_modules().items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), name
    model.zero_grad(set_to_none=True)
    model.eval()


# --- GLaMM: the paper's initialisation ------------------------------------------------------------


def test_glamm_conversion_writes_a_complete_checkpoint(glamm_out):
    result, _, lines = glamm_out
    out = result.out
    for rel in ["config.json", "conversion_report.json", "semantic/adapter_config.json",
                "semantic/adapter_model.safetensors", "spatial/adapter_model.safetensors", "heads.safetensors",
                "tokenizer/tokenizer.json", "base/llava/config.json", "base/sam.safetensors"]:
        assert (out / rel).is_file(), rel
    assert not (out / ".semantic-svd").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["glamm-init"]  # no temporaries left
    config = json.loads((out / "config.json").read_text())
    assert config["prompt"] == GLAMM_PROMPT_JSON
    assert config["base"]["kind"] == "stored"
    assert config["model"]["clip_pad_to_square"] is False
    assert config["model"]["lora"]["r"] == RANK and config["model"]["lora"]["alpha"] == ALPHA
    prepared = config["extra"]["prepared_from"]
    assert prepared["source"] == "glamm" and prepared["conversion_report"] == "conversion_report.json"
    assert set(prepared["sources"]) == {"grand", "refseg", "clip", "tokenizer"}
    assert len(lines) >= 4 and any("SVD" in line for line in lines)


def test_glamm_every_mapped_tensor_equals_its_source(glamm_out, sources):
    result, model, _ = glamm_out
    states = {"grand": sources["grand_state"], "refseg": sources["refseg_state"], "clip": sources["clip_state"]}
    token_targets = {"model.language_model.embed_tokens.weight", "lm_head.weight"}
    mapped = result.report.mapping.mapped
    assert len(mapped) > 50
    for target, record in mapped.items():
        source = states[record.source][record.key].float()
        if target in token_targets:
            continue
        assert torch.equal(loaded(model, target, record.component).float(), source), target
    # Which source each part comes from (docs/design.md, "GLaMM initialisation").
    by_source = {t: r.source for t, r in mapped.items()}
    assert by_source["mask_decoder.mask_tokens.weight"] == "refseg"
    assert by_source["image_encoder.patch_embed.proj.weight"] == "grand"
    assert by_source["semantic_proj.0.weight"] == "refseg"
    assert by_source["model.language_model.layers.0.self_attn.q_proj.weight"] == "grand"
    assert by_source["model.vision_tower.post_layernorm.weight"] == "clip"


def test_glamm_token_rows_move_by_string(glamm_out, sources):
    result, model, _ = glamm_out
    base, refseg = sources["base_vocab"], sources["refseg_state"]
    glamm_ids = {token: base + i for i, token in enumerate(GLAMM_TOKENS)}
    vocab = model.tokenizer.get_vocab()
    state = model.state_dict()
    embed = state["llm.base_model.model.model.language_model.embed_tokens.weight"]
    head = state["llm.base_model.model.lm_head.weight"]
    for matrix, key in ((embed, "model.embed_tokens.weight"), (head, "lm_head.weight")):
        assert torch.equal(matrix[:base], refseg[key][:base].float())
        for token in ("<im_start>", "<im_end>", "[SEG]"):
            assert torch.equal(matrix[vocab[token]], refseg[key][glamm_ids[token]].float()), token
    # The trainable [SEG] rows start from RefSeg's trained [SEG]; [BOX] and <sem> from the base-row mean.
    seg = model.token_ids.added.index(model.token_ids.seg)
    assert torch.equal(model.token_rows.input_rows[seg], refseg["model.embed_tokens.weight"][glamm_ids["[SEG]"]].float())
    assert torch.equal(model.token_rows.output_rows[seg], refseg["lm_head.weight"][glamm_ids["[SEG]"]].float())
    assert vocab["<image>"] == base and model.token_ids.image == base
    assert set(result.report.tokens.initialised) >= {"[BOX]", "<sem>"}


def test_glamm_semantic_adapter_reproduces_refseg_and_spatial_starts_at_zero(glamm_out, sources):
    result, model, _ = glamm_out
    summary = result.adapter_summaries()["semantic"]
    assert summary["matrices"] == 2 * TINY.llm_layers
    # The stored q/v matrices are bf16, so the difference carries rounding noise of ~2^-9 of RefSeg's weights.
    assert summary["max_relative_error"] < 1e-2 and summary["median_relative_error"] <= summary["max_relative_error"]
    # Error and captured energy per matrix, in the report and in the JSON summary alike.
    report = json.loads(result.report_path.read_text())
    per_matrix = report["adapters"]["semantic"]["per_matrix"]
    assert len(per_matrix) == 2 * TINY.llm_layers
    assert all(m["relative_error"] < 1e-2 and m["energy"] > 1 - 1e-4 for m in per_matrix)
    assert result.to_dict()["adapters"]["semantic"]["per_matrix"] == per_matrix
    assert not any(note.startswith("WARNING: the semantic adapter") for note in result.notes)
    # GranD was checked to be RefSeg's parent.
    frozen = [k for k in sources["grand_state"] if not GLAMM_LORA_KEY.fullmatch(k)
              and not any(part in k for part in GLAMM_FULLY_TRAINED)]
    assert report["parent_check"]["frozen_tensors_identical"] == len(frozen) > 20
    assert result.to_dict()["parent_check"] == report["parent_check"]
    assert any(note.startswith("GranD is RefSeg's parent") for note in result.notes)

    refseg, grand = sources["refseg_state"], sources["grand_state"]
    hidden = torch.randn(5, TINY.llm_hidden, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for layer in range(TINY.llm_layers):
            for proj in ("q_proj", "v_proj"):
                module = model.language_model.layers[layer].self_attn.get_submodule(proj)
                key = f"model.layers.{layer}.self_attn.{proj}.weight"
                with model.adapters.use("semantic"):
                    got = module(hidden)
                want = hidden @ refseg[key].float().T
                assert (got - want).abs().max() < 1e-2 * want.abs().max(), key
                with model.adapters.use("spatial"):  # fresh LoRA: B = 0, so exactly the GranD base
                    assert torch.allclose(module(hidden), hidden @ grand[key].float().T, atol=1e-6)


def test_glamm_report_records_drops_and_decisions(glamm_out, sources):
    result, _, _ = glamm_out
    report = json.loads(result.report_path.read_text())
    table = {(row["source"], row["component"]): row for row in report["mapping"]["table"]}
    assert table[("grand", "region_encoder")]["dropped"] == 4 and table[("refseg", "region_encoder")]["dropped"] == 4
    assert table[("grand", "rotary")]["dropped"] == 1
    # GranD's mask decoder is present but not taken (RefSeg's is).
    assert any(r.startswith("not taken from grand") for r in table[("grand", "sam")]["reasons"])
    assert report["mapping"]["counts"]["unmapped"] == 0 and report["mapping"]["missing"] == []
    notes = " ".join(result.notes)
    assert "llava_v1 system prompt" in notes and "<im_start><image><im_end>" in notes
    assert "region encoder (4 tensors) is dropped" in notes
    assert f"the SAM checkpoint {sources['sam']} was not read" in notes
    assert report["notes"] == result.notes
    assert result.to_dict()["prompt"] == GLAMM_PROMPT_JSON


def test_the_prompt_format_in_config_json_is_validated_and_optional(glamm_out):
    from ppcr.modeling.config import PPCRConfig, PromptFormat

    data = json.loads((glamm_out[0].out / "config.json").read_text())
    assert PPCRConfig.from_dict(data).prompt == PromptFormat(**GLAMM_PROMPT_JSON)
    older = {k: v for k, v in data.items() if k != "prompt"}  # checkpoints written before the flag existed
    assert PPCRConfig.from_dict(older).prompt == PromptFormat(**LLAVA_HF_PROMPT_JSON)
    # A GLaMM checkpoint written before the system prompt and image text were stored: as it was.
    wrapped_only = PPCRConfig.from_dict({**data, "prompt": {"image_start_end": True}}).prompt
    assert wrapped_only == PromptFormat(**{**LLAVA_HF_PROMPT_JSON, "image_start_end": True})
    for bad in ({"image_start_end": "yes"}, {"system": 3}, {"image_text": "no placeholder"},
                {"image_text": "<image><image>"}, {"system": "say [SEG]"}, {"image_text": "<image> <sem>"},
                {"roles": ["A", "B"]}):
        with pytest.raises(CheckpointError, match="malformed"):
            PPCRConfig.from_dict({**data, "prompt": bad})


def test_the_base_vocabularies_are_compared_when_both_have_a_sentencepiece_model(sources, tmp_path):
    import shutil

    from ppcr.weights.prepare import _tokenizer_model_check

    grand, tokenizer = tmp_path / "grand", tmp_path / "tokenizer"
    shutil.copytree(sources["grand"], grand)
    shutil.copytree(sources["tokenizer"], tokenizer)
    assert _tokenizer_model_check(grand, tokenizer).startswith("base vocabulary not compared")
    (grand / "tokenizer.model").write_bytes(b"sentencepiece model")
    (tokenizer / "tokenizer.model").write_bytes(b"sentencepiece model")
    assert "are identical" in _tokenizer_model_check(grand, tokenizer)
    (tokenizer / "tokenizer.model").write_bytes(b"another model")
    assert _tokenizer_model_check(grand, tokenizer).startswith("WARNING")


def test_glamm_converted_model_runs_the_pipeline_with_the_wrapped_image(glamm_out):
    _, model, _ = glamm_out
    processor = PPCRProcessor.from_model(model)
    text = processor.texts(["the red circle"], [0])
    ids = text.semantic.input_ids[0].tolist()
    vocab = model.tokenizer.get_vocab()
    first = ids.index(model.token_ids.image)
    last = first + model.image_seq_length
    assert ids[first - 1] == vocab["<im_start>"] and ids[last] == vocab["<im_end>"]
    assert ids[first:last] == [model.token_ids.image] * model.image_seq_length
    runs_the_pipeline(model)


def reference_ids(model: PPCRModel, conversation: str) -> list[int]:
    """The ids GLaMM gives a conversation string: BOS, its tokens (``</s>`` is EOS), ``<image>`` expanded."""
    ids = [model.token_ids.bos]
    for token in model.tokenizer(conversation, add_special_tokens=False).input_ids:
        ids.extend([token] * model.image_seq_length if token == model.token_ids.image else [token])
    return ids


def test_glamm_prompts_are_the_sequence_glamm_was_trained_on(glamm_out):
    _, model, _ = glamm_out  # loaded back from its checkpoint, as eval, predict and training load it
    assert model.spec.spatial_prompt == "semantic"
    processor = PPCRProcessor.from_model(model)
    assert processor.conversation("Q?", "A.") + "</s>" == GLAMM_USER + "Q? ASSISTANT: A.</s>"
    text = processor.texts(["Red circle "], [0])  # evaluation / prediction templates
    semantic = text.semantic.input_ids[0].tolist()
    assert semantic == reference_ids(model, GLAMM_SEMANTIC_TURN)
    assert text.spatial.input_ids[0].tolist() == reference_ids(model, GLAMM_SPATIAL_TURN)
    # Only the answer and its </s> are trained on, as in GLaMM's targets.
    answer_start = len(reference_ids(model, GLAMM_SEMANTIC_TURN.split(" It is [SEG]")[0]))
    labels = text.semantic.labels[0].tolist()
    assert set(labels[:answer_start]) == {-100} and labels[answer_start:] == semantic[answer_start:]
    # Training samples other questions, in the same conversation.
    prefix = reference_ids(model, GLAMM_USER)
    trained = processor.texts(["red circle"] * 4, [0] * 4, rng=random.Random(1))
    for row in (*trained.semantic.input_ids.tolist(), *trained.spatial.input_ids.tolist()):
        assert row[: len(prefix)] == prefix


def test_shared_prefix_and_grouped_evaluation_are_exact_with_glamms_longer_prefix(glamm_out, small_shapes_root):
    from ppcr.evaluation.evaluate import evaluate

    _, model, _ = glamm_out
    model.eval()
    processor = PPCRProcessor.from_model(model)
    rows = samples() * 2
    images = processor.images([rows[0].image, np.ascontiguousarray(rows[0].image[::-1])])
    text = processor.texts([s.expression for s in rows], [0, 0, 1, 1])
    # The shared prefix runs past the system prompt to the image tokens.
    ids = text.semantic.input_ids
    assert prefix_length(ids, model.token_ids) == len(reference_ids(model, GLAMM_USER.split("<image>")[0] + "<image>"))
    with torch.no_grad():
        features = model.encode_images(images)
        shared = model.segment(features, text, share_prefix=True)
        plain = model.segment(features, text, share_prefix=False)
    assert torch.allclose(shared.h_sem, plain.h_sem, atol=1e-5)
    assert torch.allclose(shared.boxes, plain.boxes, atol=1e-5)
    for a, b in zip(shared.mask_logits, plain.mask_logits):
        assert torch.allclose(a, b, atol=1e-4)

    masks: dict[str, dict] = {"grouped": {}, "naive": {}}
    for mode in masks:
        def keep(sample, mask, row, into=masks[mode]):
            into[(sample.ref_id, sample.sent_id)] = mask.copy()

        evaluate(model, "shapes", "val", small_shapes_root, naive=mode == "naive", batch_size=8, on_prediction=keep)
    assert len(masks["grouped"]) > 10 and masks["grouped"].keys() == masks["naive"].keys()
    assert all(np.array_equal(mask, masks["naive"][key]) for key, mask in masks["grouped"].items())


def test_the_prompt_format_survives_saving_again(glamm_out, tmp_path):
    _, model, _ = glamm_out
    model.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["prompt"] == GLAMM_PROMPT_JSON
    assert PPCRModel.from_pretrained(tmp_path / "again").prompt_format == model.prompt_format


def test_a_wrapped_prompt_format_needs_the_wrapper_tokens(sources):
    from ppcr.modeling.config import PromptFormat, TokenIds
    from ppcr.modeling.llava import add_ppcr_tokens, load_tokenizer

    tok = load_tokenizer(sources["tokenizer"])
    ids: TokenIds = add_ppcr_tokens(tok)
    with pytest.raises(DataError, match="no <im_start> token"):
        PPCRProcessor(tok, ids, spatial_prompt="semantic", image_seq_length=4, clip_size=64, sam_size=128,
                      prompt=PromptFormat(**GLAMM_PROMPT_JSON))


# --- llava-hf + SAM -------------------------------------------------------------------------------


def test_llava_conversion_references_the_public_base(llava_out, sources):
    result, _ = llava_out
    config = json.loads((result.out / "config.json").read_text())
    # Local sources are written relative to the checkpoint, so the two can move together.
    here = result.out.resolve()
    assert config["base"] == {"kind": "reference", "llava": os.path.relpath(sources["llava"].resolve(), here),
                              "sam": os.path.relpath(sources["sam"].resolve(), here)}
    assert config["base"]["llava"].startswith("../")
    assert config["extra"]["prepared_from"]["sources"]["llava"] == config["base"]["llava"]
    assert config["prompt"] == LLAVA_HF_PROMPT_JSON and config["model"]["clip_pad_to_square"] is True
    assert not (result.out / "base").exists()
    counts = result.report.mapping.counts()
    assert counts["unmapped"] == 0 and counts["missing"] == 0
    assert counts["mapped_by_component"]["sam"] == len(sources["sam_state"])


def test_llava_mapped_tensors_equal_their_sources_and_new_rows_start_at_the_mean(llava_out, sources):
    result, model = llava_out
    in_memory = {"llava": sources["llava_state"], "sam": sources["sam_state"]}  # keyed by target name
    mapped = result.report.mapping.mapped
    assert set(mapped) == set(in_memory["llava"]) | set(in_memory["sam"])
    for target, record in mapped.items():
        want = in_memory[record.component][target]
        assert torch.equal(loaded(model, target, record.component), want), target
    embed = sources["llava_state"]["model.language_model.embed_tokens.weight"]
    base = sources["base_vocab"]
    mean = embed[:base].double().mean(0).float()
    seg = model.token_ids.added.index(model.token_ids.seg)
    assert torch.allclose(model.token_rows.input_rows[seg], mean)
    assert set(result.report.tokens.carried) == {"<image>", "<pad>"}
    # The mask decoder comes from SAM; the semantic adapter is fresh (B = 0).
    assert torch.equal(model.sam.mask_decoder.mask_tokens.weight, sources["sam_state"]["mask_decoder.mask_tokens.weight"])
    assert all(p.abs().sum() == 0 for n, p in model.adapters.parameters("semantic").items() if "lora_B" in n)


def test_llava_converted_model_runs_the_pipeline(llava_out):
    _, model = llava_out
    # llava-hf's prompt, by hand: no system prompt, a bare <image> line.
    ids = PPCRProcessor.from_model(model).texts(["red circle"], [0]).semantic.input_ids[0].tolist()
    assert ids == reference_ids(model, LLAVA_HF_SEMANTIC_TURN)
    assert "<im_start>" not in model.tokenizer.get_vocab()  # llava-hf prompts: a bare <image>
    text = PPCRProcessor.from_model(model).texts(["the red circle"], [0])
    ids = text.semantic.input_ids[0].tolist()
    first = ids.index(model.token_ids.image)
    assert ids[first + model.image_seq_length] != model.token_ids.image
    runs_the_pipeline(model)


def test_copy_base_makes_a_checkpoint_that_moves_alone(sources, tmp_path, llava_out):
    _, referring = llava_out
    result = prepare_weights("llava", tmp_path / "copied", llava=sources["llava"], sam=sources["sam"], size=TINY,
                             copy_base=True)
    assert result.config.base.kind == "stored" and (result.out / "base" / "llava" / "config.json").is_file()
    moved = result.out.rename(tmp_path / "moved")
    copied = PPCRModel.from_pretrained(moved)

    def predict(model: PPCRModel):
        model.eval()
        batch = PPCRProcessor.from_model(model)(samples())
        with torch.no_grad():
            return model.segment(model.encode_images(batch.images), batch.text)

    # Same weights wherever they are used (the base rows of the added tokens are unused: their
    # rows come from token_rows), so the same outputs as the checkpoint that refers to its base.
    ours, theirs = predict(copied), predict(referring)
    assert torch.equal(ours.h_sem, theirs.h_sem) and torch.equal(ours.boxes, theirs.boxes)
    assert all(torch.equal(a, b) for a, b in zip(ours.mask_logits, theirs.mask_logits, strict=True))


def test_conversion_is_deterministic_for_a_seed(sources, tmp_path, llava_out):
    from safetensors.torch import load_file

    result, _ = llava_out
    prepare_weights("llava", tmp_path / "again", llava=sources["llava"], sam=sources["sam"], size=TINY)
    for rel in ("heads.safetensors", "spatial/adapter_model.safetensors"):
        a, b = load_file(str(result.out / rel)), load_file(str(tmp_path / "again" / rel))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel


# --- refusals: one-line errors, nothing written ----------------------------------------------------


def test_missing_arguments_and_an_occupied_destination_are_refused_first(sources, tmp_path):
    with pytest.raises(PPCRError, match="--from glamm needs --semantic"):
        prepare_weights("glamm", tmp_path / "o", base=sources["grand"], size=TINY)
    with pytest.raises(PPCRError, match="--base is only for --from glamm"):
        prepare_weights("llava", tmp_path / "o", llava=sources["llava"], sam=sources["sam"], base=sources["grand"])
    with pytest.raises(PPCRError, match="unknown model size"):
        prepare_weights("llava", tmp_path / "o", llava=sources["llava"], sam=sources["sam"], size="13b")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(PPCRError, match="already exists") as error:
        prepare_weights("llava", occupied, llava=sources["llava"], sam=sources["sam"], size=TINY)
    assert "--overwrite" in error.value.hint
    assert (occupied / "keep.txt").read_text() == "mine"


def test_a_failure_half_way_leaves_the_destination_untouched(sources, tmp_path):
    import shutil

    refseg = tmp_path / "refseg"
    shutil.copytree(sources["refseg"], refseg)
    shard = max(refseg.glob("pytorch_model-*.bin"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous")
    args = {**glamm_args(sources), "semantic": refseg}
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        prepare_weights("glamm", out, overwrite=True, **args)
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "refseg"]  # no temporaries left


def test_a_grand_that_is_not_refsegs_parent_is_refused_and_nothing_is_written(sources, tmp_path):
    grand = dict(sources["grand_state"])
    key = "model.layers.1.self_attn.k_proj.weight"  # frozen in GLaMM's fine-tuning
    grand[key] = (grand[key].float() * 1.05).to(grand[key].dtype)
    other = write_glamm(tmp_path / "other-grand", grand, sources["base_vocab"], shards=2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous")
    with pytest.raises(CheckpointError) as error:
        prepare_weights("glamm", out, overwrite=True, **{**glamm_args(sources), "base": other})
    message = error.value.message
    assert message.startswith(f"{sources['refseg']} was not fine-tuned from {other}: {key}, which GLaMM's")
    assert "differs (max |difference|" in message and "\n" not in message
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other-grand", "out"]  # no temporaries left


def test_an_adapter_that_misses_most_of_the_difference_is_flagged(sources, tmp_path):
    # RefSeg's planted LoRA has rank 8: a rank-1 adapter keeps about an eighth of it.
    result = prepare_weights("glamm", tmp_path / "rank1", **{**glamm_args(sources), "rank": 1, "alpha": 2})
    summary = result.to_dict()["adapters"]["semantic"]
    assert summary["median_relative_error"] > 0.5 and summary["median_energy"] < 0.5
    warnings = [note for note in result.notes if note.startswith("WARNING: the semantic adapter")]
    assert len(warnings) == 1 and f"median relative error is {summary['median_relative_error']:.2f}" in warnings[0]
    assert warnings[0] in json.loads(result.report_path.read_text())["notes"]


def test_wrong_architecture_is_refused(sources, tmp_path):
    other = TinySpec(llm_hidden=64)
    with pytest.raises(CheckpointError, match="expects") as error:
        prepare_weights("llava", tmp_path / "o", llava=sources["llava"], sam=sources["sam"], size=other)
    assert "\n" not in error.value.message
    with pytest.raises(CheckpointError, match="is a llava-hf checkpoint, not a GLaMM checkpoint"):
        prepare_weights("glamm", tmp_path / "o", **{**glamm_args(sources), "base": sources["llava"]})
    with pytest.raises(CheckpointError, match="matches none of vit_h"):
        prepare_weights("llava", tmp_path / "o", llava=sources["llava"], sam=sources["sam"], size="7b")
    assert not (tmp_path / "o").exists()


# --- the 7b architecture: every parameter has a source, by key name alone ---------------------------


class Planned(Exception):
    """Raised where the first tensor would be read: the plan (names only) has passed."""


def llava_hf_7b_like_tokenizer():
    """A tokenizer with llava-hf's id layout: 32000 base tokens, then <image> 32000 and <pad> 32001."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 32000)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    tok.add_special_tokens({"pad_token": "<pad>"})
    return tok


def write_index(directory: Path, keys: list[str], index: str, shard_names: list[str]) -> Path:
    """An index naming every key, with empty shard files: enough for the name-only plan."""
    directory.mkdir(parents=True, exist_ok=True)
    weight_map = {key: shard_names[i * len(shard_names) // len(keys)] for i, key in enumerate(keys)}
    (directory / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for name in shard_names:
        (directory / name).write_bytes(b"")
    return directory


def glamm_7b_keys() -> list[str]:
    """GLaMM's parameter names at full size (as its model/GLaMM.py builds them), from meta-device modules."""
    from transformers import LlamaConfig, LlamaModel

    from ppcr.modeling.llava import llava_7b_config
    from ppcr.modeling.sam import OFFICIAL_SAM, build_sam
    from ppcr.weights.skeleton import parameters_on_meta

    text = llava_7b_config().text_config.to_dict()
    text["vocab_size"] = 32007
    with parameters_on_meta():
        llm = LlamaModel(LlamaConfig(**text))
        sam = build_sam(OFFICIAL_SAM["vit_h"])
    keys = [f"model.{k}" for k in llm.state_dict()]
    keys += [f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(32)]
    keys += ["lm_head.weight"] + [f"model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    keys += [f"model.grounding_encoder.{k}" for k in sam.state_dict()]
    keys += [f"model.text_hidden_fcs.0.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    keys += ["model.region_encoder.mlvl_fuse.fuse_convs.0.conv.weight",
             "model.region_encoder.roi_align.flatten_linear.weight", "model.region_encoder.roi_align.updims.weight"]
    return keys


def clip_l_keys() -> list[str]:
    from transformers import CLIPConfig, CLIPModel

    from ppcr.modeling.llava import llava_7b_config
    from ppcr.weights.skeleton import parameters_on_meta

    text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                vocab_size=49408, max_position_embeddings=77, projection_dim=768)
    vision = llava_7b_config().vision_config.to_dict()
    with parameters_on_meta():
        clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=768))
    return list(clip.state_dict()) + ["vision_model.embeddings.position_ids", "text_model.embeddings.position_ids"]


def plan_only(monkeypatch) -> list:
    """Stop prepare_weights at its first tensor read, keep the plan's report, allocate nothing."""
    from ppcr.weights import assembly, report, skeleton

    reports = []

    class Recording(report.MappingReport):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            reports.append(self)

    def stop(*_args, **_kwargs):
        raise Planned

    monkeypatch.setattr(assembly, "MappingReport", Recording)
    monkeypatch.setattr(assembly, "iter_tensors", stop)
    monkeypatch.setattr(skeleton, "materialize", lambda module, *a, **k: module)  # stays on meta: 0 bytes
    return reports


def test_glamm_7b_names_plan_completely(tmp_path, monkeypatch):
    tok = llava_hf_7b_like_tokenizer()
    tok.save_pretrained(tmp_path / "tokenizer")
    glamm_vocab = {token: 32000 + i for i, token in enumerate(GLAMM_TOKENS)}
    shards = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    for name in ("grand", "refseg"):
        write_index(tmp_path / name, glamm_7b_keys(), "pytorch_model.bin.index.json", shards)
        (tmp_path / name / "added_tokens.json").write_text(json.dumps(glamm_vocab))
    write_index(tmp_path / "clip", clip_l_keys(), "pytorch_model.bin.index.json", ["pytorch_model.bin"])
    reports = plan_only(monkeypatch)
    with pytest.raises(Planned):
        prepare_weights("glamm", tmp_path / "out", base=tmp_path / "grand", semantic=tmp_path / "refseg",
                        clip=tmp_path / "clip", tokenizer=tmp_path / "tokenizer", size="7b")
    plan = reports[0]
    assert plan.missing == [] and plan.unmapped == []
    assert len(plan.mapped) > 1000
    dropped = {r.component for r in plan.dropped if not r.reason.startswith("not taken")}
    assert dropped == {"rotary", "region_encoder", "clip_text", "vision_tower"}
    assert not (tmp_path / "out").exists()


def test_llava_7b_names_plan_completely(tmp_path, monkeypatch):
    from transformers import LlavaForConditionalGeneration

    from ppcr.modeling.llava import llava_7b_config
    from ppcr.modeling.sam import OFFICIAL_SAM, build_sam
    from ppcr.weights.skeleton import parameters_on_meta

    with parameters_on_meta():
        llava = LlavaForConditionalGeneration(llava_7b_config())
        sam = build_sam(OFFICIAL_SAM["vit_h"])
    legacy = (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
              ("model.vision_tower.", "vision_tower.vision_model."), ("model.multi_modal_projector.", "multi_modal_projector."))
    keys = []
    for key in llava.state_dict():  # llava-hf's on-disk (pre-4.52) names
        old, new = next((o, n) for o, n in legacy if key.startswith(o))
        keys.append(new + key[len(old):])
    shards = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    directory = write_index(tmp_path / "llava", keys, "model.safetensors.index.json", shards)
    (directory / "config.json").write_text("{}")
    llava_hf_7b_like_tokenizer().save_pretrained(directory)
    torch.save({k: torch.zeros(1) for k in sam.state_dict()}, tmp_path / "sam_vit_h_4b8939.pth")  # names only
    reports = plan_only(monkeypatch)
    with pytest.raises(Planned):
        prepare_weights("llava", tmp_path / "out", llava=directory, sam=tmp_path / "sam_vit_h_4b8939.pth", size="7b")
    plan = reports[0]
    assert plan.missing == [] and plan.unmapped == [] and plan.dropped == []
    assert len(plan.mapped) == len(keys) + len(sam.state_dict())
