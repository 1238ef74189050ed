"""The model's building blocks: SAM without torchvision, strict SAM loading, the tiny tokenizer,
the losses, the heads and the processor."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ppcr.config.schema import LossSpec, TinySpec
from ppcr.data import templates
from ppcr.errors import CheckpointError, DataError
from ppcr.modeling import losses
from ppcr.modeling.config import TokenIds
from ppcr.modeling.heads import AttnBoxHead, BoxMLP, SemanticProjection, StateStandardiser
from ppcr.modeling.llava import add_ppcr_tokens
from ppcr.modeling.processor import IGNORE_INDEX, PPCRProcessor, PPCRSample
from ppcr.modeling.sam import (
    OFFICIAL_SAM,
    build_sam,
    load_sam_weights,
    sam_architecture,
    sam_modeling,
    sam_state_dict,
)
from ppcr.modeling.tokenizer import train_tiny_tokenizer

# ----------------------------------------------------------------------------- SAM


def test_sam_modeling_imports_without_torchvision():
    code = (
        "import sys\n"
        "from ppcr.modeling.sam import sam_modeling, build_sam, sam_architecture\n"
        "m = sam_modeling(); build_sam(sam_architecture('tiny'))\n"
        "assert 'torchvision' not in sys.modules, 'torchvision imported'\n"
        "print(m.Sam.__module__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "segment_anything.modeling.sam"


@pytest.mark.parametrize("size", ["vit_h", "vit_l", "vit_b"])
def test_official_sizes_match_segment_anythings_own_builders(size):
    """Same keys and shapes as ``segment_anything.build_sam`` (built on meta, no weights)."""
    sam_modeling()
    from segment_anything import build_sam as official  # the stub package makes this importable

    with torch.device("meta"):
        ours = build_sam(sam_architecture(size)).state_dict()
        theirs = official.sam_model_registry[size]().state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert all(k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder.")) for k in ours)


@pytest.fixture(scope="module")
def tiny_sam_file(tmp_path_factory):
    sam = build_sam(sam_architecture("tiny", TinySpec()))
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(sam_state_dict(sam), path)
    return path, sam_state_dict(sam)


def test_sam_state_dict_loads_strictly_in_official_layout(tiny_sam_file):
    path, state = tiny_sam_file
    assert "pixel_mean" not in state and "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix" in state
    fresh = build_sam(sam_architecture("tiny"))
    load_sam_weights(fresh, path, size="tiny")
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("mask_decoder.iou_token.weight"), "missing"),
        (lambda s: s.__setitem__("mask_decoder.extra.weight", torch.zeros(1)), "unexpected"),
        (lambda s: s.__setitem__("image_encoder.pos_embed", torch.zeros(1, 2, 2, 2)), "shape"),
    ],
)
def test_sam_checkpoint_mismatch_is_a_one_line_checkpoint_error(tiny_sam_file, tmp_path, edit, message):
    _, state = tiny_sam_file
    state = dict(state)
    edit(state)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_sam_weights(build_sam(sam_architecture("tiny")), path, size="tiny")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_sam_checkpoint_that_is_not_a_state_dict_is_refused(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read SAM checkpoint"):
        load_sam_weights(build_sam(sam_architecture("tiny")), corrupt)
    with pytest.raises(CheckpointError, match="not found"):
        load_sam_weights(build_sam(sam_architecture("tiny")), tmp_path / "absent.pth")


def test_official_hyper_parameters_are_written_out():
    assert OFFICIAL_SAM["vit_h"].encoder_embed_dim == 1280 and OFFICIAL_SAM["vit_h"].encoder_depth == 32
    assert OFFICIAL_SAM["vit_h"].encoder_global_attn_indexes == (7, 15, 23, 31)
    assert OFFICIAL_SAM["vit_b"].encoder_global_attn_indexes == (2, 5, 8, 11)
    assert OFFICIAL_SAM["vit_l"].embedding_size == 64 and OFFICIAL_SAM["vit_l"].prompt_embed_dim == 256


# ----------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    tok = train_tiny_tokenizer(1024)
    return tok, add_ppcr_tokens(tok)


def test_tiny_tokenizer_is_deterministic_and_keeps_ppcr_tokens_whole(tokenizer):
    from ppcr.modeling.tokenizer import _trained_tokenizer_json

    tok, ids = tokenizer
    _trained_tokenizer_json.cache_clear()  # really train a second time
    again = train_tiny_tokenizer(1024)
    assert add_ppcr_tokens(again) == ids and again.get_vocab() == tok.get_vocab()
    text = "USER: <image>\nWhere is <sem>? ASSISTANT: It is [SEG] and [BOX]."
    encoded = tok(text, add_special_tokens=False).input_ids
    for token_id in (ids.image, ids.sem, ids.seg, ids.box):
        assert encoded.count(token_id) == 1
    assert len({ids.image, ids.pad, ids.bos, ids.eos, ids.seg, ids.box, ids.sem}) == 7
    # Adding again is a no-op.
    assert add_ppcr_tokens(tok) == ids


def test_tiny_tokenizer_gives_every_shapes_word_one_token(tokenizer):
    from ppcr.data.shapes.vocabulary import vocabulary

    tok, _ = tokenizer
    for word in vocabulary():
        assert len(tok(" " + word, add_special_tokens=False).input_ids) == 1, word
    # Unseen text still encodes (byte-level), and decodes back.
    assert tok.decode(tok("zebra crossing 42", add_special_tokens=False).input_ids) == "zebra crossing 42"


def test_tokenizer_round_trips_through_save_pretrained(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tok, ids = tokenizer
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert add_ppcr_tokens(loaded) == ids
    text = templates.llava_prompt(*templates.semantic_turn("the big red circle"))
    assert loaded(text, add_special_tokens=False).input_ids == tok(text, add_special_tokens=False).input_ids


# ----------------------------------------------------------------------------- losses


def test_dice_matches_glamms_formula_by_hand():
    logits = torch.tensor([[2.0, -1.0], [0.5, -3.0]])
    target = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    p = logits.sigmoid()
    inter = 2 * (p / 1000 * target).sum()
    union = (p / 1000).sum() + (target / 1000).sum()
    expected = 1 - (inter + 1e-6) / (union + 1e-6)
    assert torch.allclose(losses.dice_loss_one(logits, target), expected)
    perfect = torch.where(target > 0, torch.tensor(50.0), torch.tensor(-50.0))
    assert losses.dice_loss_one(perfect, target) < 1e-3


def test_mask_losses_average_per_mask_then_over_masks():
    a, b = torch.randn(3, 4), torch.randn(5, 2)
    ta, tb = (torch.rand(3, 4) > 0.5).float(), (torch.rand(5, 2) > 0.5).float()
    bce = losses.mask_bce([a, b], [ta, tb])
    expected = (F.binary_cross_entropy_with_logits(a, ta) + F.binary_cross_entropy_with_logits(b, tb)) / 2
    assert torch.allclose(bce, expected)
    dice = losses.mask_dice([a, b], [ta, tb])
    assert torch.allclose(dice, (losses.dice_loss_one(a, ta) + losses.dice_loss_one(b, tb)) / 2)


def test_weighted_total_uses_the_recipe_lambdas():
    terms = {"bce": torch.tensor(1.0), "dice": torch.tensor(2.0), "l1": torch.tensor(3.0), "ce": torch.tensor(4.0)}
    total = losses.weighted_total(terms, LossSpec(bce=2.0, dice=0.5, l1=2.0, ce=0.5))
    assert float(total) == pytest.approx(2 * 1 + 0.5 * 2 + 2 * 3 + 0.5 * 4)
    assert float(losses.box_l1(torch.tensor([[0.1, 0.2, 0.3, 0.4]]), torch.tensor([[0.2, 0.2, 0.3, 0.8]]))) == pytest.approx(0.125)


# ----------------------------------------------------------------------------- heads


def test_heads_shapes_and_ranges():
    torch.manual_seed(0)
    proj = SemanticProjection(32, 16)
    assert proj(torch.randn(5, 32)).shape == (5, 16)
    box = BoxMLP(32)(torch.randn(5, 32) * 100)
    assert box.shape == (5, 4) and ((box >= 0) & (box <= 1)).all()
    head = AttnBoxHead(32, num_image_tokens=9, dim=16, layers=2, heads=4, mlp_ratio=2.0)
    tokens = torch.randn(5, 9, 32)
    out = head(torch.randn(5, 32), tokens)
    assert out.shape == (5, 4) and ((out >= 0) & (out <= 1)).all()
    # The box depends on the image tokens (cross-attention), not only on the query.
    query = torch.randn(2, 32)
    assert not torch.allclose(head(query, tokens[:2]), head(query, tokens[2:4]))
    with pytest.raises(ValueError):
        head(query)


def test_state_standardiser_removes_the_common_component_of_a_batch():
    torch.manual_seed(0)
    common = torch.randn(1, 32) * 5
    states = common + 0.1 * torch.randn(64, 32)  # nearly one vector, as a random LLM gives
    norm = StateStandardiser(32, momentum=1.0)  # running stats = the last batch's
    out = norm(states)
    torch.testing.assert_close(out.mean(0), torch.zeros(32), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(0, unbiased=False), torch.ones(32), atol=1e-3, rtol=0)
    # Evaluation and one-sample training batches use the running statistics, so a sample's
    # output does not depend on its batch.
    one = norm(states[:1])
    norm.eval()
    torch.testing.assert_close(one, norm(states[:1]))
    torch.testing.assert_close(norm(states)[:1], one)
    assert norm.norm.running_mean.abs().max() > 1.0  # it learnt the common vector


# ----------------------------------------------------------------------------- processor


@pytest.fixture(scope="module")
def processor(tokenizer):
    tok, ids = tokenizer
    return PPCRProcessor(
        tok, ids, spatial_prompt="semantic", image_seq_length=16, clip_size=32, sam_size=64, max_length=60
    )


def _answer_tokens(stage, row: int) -> list[int]:
    labels = stage.labels[row]
    return labels[labels != IGNORE_INDEX].tolist()


def test_prompts_expand_the_image_and_label_only_the_answers(processor, tokenizer):
    tok, ids = tokenizer
    text = processor.texts(["the red circle", "the big blue square on the left"], [0, 1])
    for stage, token in ((text.semantic, ids.seg), (text.spatial, ids.box)):
        for row in range(2):
            real = stage.attention_mask[row].bool()
            row_ids = stage.input_ids[row][real].tolist()
            assert row_ids[0] == ids.bos and row_ids[-1] == ids.eos
            assert row_ids.count(ids.image) == 16
            assert stage.input_ids[row][~real].eq(ids.pad).all()
            answer = _answer_tokens(stage, row)
            assert answer[-1] == ids.eos and answer.count(token) == 1
            decoded = tok.decode(answer[:-1]).strip()
            expected = templates.EVAL_SEMANTIC_ANSWER if token == ids.seg else templates.EVAL_SPATIAL_ANSWER
            assert decoded == expected
            # Labels are the inputs at the answer positions.
            labelled = stage.labels[row] != IGNORE_INDEX
            assert torch.equal(stage.labels[row][labelled], stage.input_ids[row][labelled])
    assert int((text.spatial.input_ids == ids.sem).sum()) == 2
    assert text.image_index.tolist() == [0, 1]


def test_eval_templates_are_fixed_and_training_templates_are_sampled(processor):
    fixed = [processor.texts(["the red circle"] * 8, [0] * 8).semantic.input_ids for _ in range(2)]
    assert torch.equal(fixed[0], fixed[1])
    assert all(torch.equal(fixed[0][0], row) for row in fixed[0])
    sampled = processor.texts(["the red circle"] * 8, [0] * 8, rng=random.Random(1)).semantic
    rows = {tuple(r[m.bool()].tolist()) for r, m in zip(sampled.input_ids, sampled.attention_mask)}
    assert len(rows) > 1
    again = processor.texts(["the red circle"] * 8, [0] * 8, rng=random.Random(1)).semantic
    assert torch.equal(sampled.input_ids, again.input_ids)


def test_long_expressions_are_cut_to_the_text_budget(processor):
    long = " ".join(["red"] * 100)
    text = processor.texts([long], [0])
    for stage in (text.semantic, text.spatial):
        assert int(stage.attention_mask.sum()) - 16 <= processor.max_length
        assert int(_answer_tokens(stage, 0)[-1]) == processor.token_ids.eos


def test_batch_shares_images_by_key_and_normalises_ground_truth(processor):
    rng = np.random.default_rng(0)
    image = (rng.random((40, 80, 3)) * 255).astype(np.uint8)
    other = (rng.random((50, 30, 3)) * 255).astype(np.uint8)
    mask = np.zeros((40, 80), bool)
    mask[5:10, 20:40] = True
    samples = [
        PPCRSample(image, "the red circle", mask, (20, 5, 40, 10), image_key="a"),
        PPCRSample(image, "the blue star", mask, (0, 0, 80, 40), image_key="a"),
        PPCRSample(other, "the green one", np.zeros((50, 30), bool), (3, 5, 6, 10)),
    ]
    batch = processor(samples)
    assert len(batch.images) == 2 and batch.text.image_index.tolist() == [0, 0, 1]
    assert batch.images.original_sizes == [(40, 80), (50, 30)]
    assert batch.images.input_sizes == [(32, 64), (64, 38)]
    assert batch.images.clip_pixels.shape == (2, 3, 32, 32) and batch.images.sam_pixels.shape == (2, 3, 64, 64)
    assert torch.allclose(batch.gt_boxes[0], torch.tensor([0.25, 0.125, 0.5, 0.25]))
    assert torch.allclose(batch.gt_boxes[1], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert batch.gt_masks[0].sum() == 100 and batch.gt_masks[0].dtype == torch.float32
    bad = [PPCRSample(image, "the red circle", np.zeros((3, 3), bool))]
    with pytest.raises(DataError, match="mask"):
        processor(bad)


def test_token_ids_dataclass_lists_the_trained_rows():
    ids = TokenIds(image=4, pad=3, bos=1, eos=2, seg=10, box=11, sem=12)
    assert ids.added == (10, 11, 12)
