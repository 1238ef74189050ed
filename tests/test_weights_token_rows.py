"""Added-token rows of embed_tokens / lm_head move by token string, not by id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ppcr.errors import CheckpointError
from ppcr.weights.token_rows import read_added_tokens, remap_added_token_rows
from tests.weights_builders import BASE_VOCAB, GLAMM_VOCAB, PPCR_ROWS, PPCR_VOCAB

CARRY = ["[SEG]", "<im_start>", "<im_end>"]


@pytest.fixture()
def glamm_matrix() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(BASE_VOCAB + len(GLAMM_VOCAB), 6, generator=generator).to(torch.bfloat16)


def test_rows_are_carried_by_string_and_the_rest_is_mean_initialised(glamm_matrix: torch.Tensor) -> None:
    remap = remap_added_token_rows(glamm_matrix, GLAMM_VOCAB, PPCR_VOCAB, CARRY, base_size=BASE_VOCAB, dst_rows=PPCR_ROWS)
    out = remap.matrix
    assert out.shape == (PPCR_ROWS, 6) and out.dtype == torch.bfloat16
    assert torch.equal(out[:BASE_VOCAB], glamm_matrix[:BASE_VOCAB])
    for token in CARRY:
        assert torch.equal(out[PPCR_VOCAB[token]], glamm_matrix[GLAMM_VOCAB[token]])
        assert remap.carried[token] == (GLAMM_VOCAB[token], PPCR_VOCAB[token])
    # Same id, different token: <image> (PPCR 32) must not inherit GLaMM's <im_start> (also 32).
    mean = glamm_matrix[:BASE_VOCAB].double().mean(0).to(torch.bfloat16)
    assert PPCR_VOCAB["<image>"] == GLAMM_VOCAB["<im_start>"]
    assert torch.equal(out[PPCR_VOCAB["<image>"]], mean)
    assert not torch.equal(out[PPCR_VOCAB["<image>"]], glamm_matrix[GLAMM_VOCAB["<im_start>"]])
    assert remap.initialised == {"<image>": 32, "<pad>": 33, "[BOX]": 37, "<sem>": 38}
    assert all(torch.equal(out[i], mean) for i in range(BASE_VOCAB + len(PPCR_VOCAB), PPCR_ROWS))
    assert remap.padding_rows == PPCR_ROWS - BASE_VOCAB - len(PPCR_VOCAB)
    assert set(remap.not_carried) == {"<bbox>", "<point>", "<p>", "</p>"}
    assert remap.to_dict()["carried"]["[SEG]"] == {"source_id": 36, "ppcr_id": 34}


def test_token_to_carry_must_exist_on_both_sides(glamm_matrix: torch.Tensor) -> None:
    with pytest.raises(CheckpointError, match=r"token \[BOX\] is not in the source tokenizer"):
        remap_added_token_rows(glamm_matrix, GLAMM_VOCAB, PPCR_VOCAB, ["[BOX]"], base_size=BASE_VOCAB)
    with pytest.raises(CheckpointError, match="token <bbox> is not in the PPCR tokenizer"):
        remap_added_token_rows(glamm_matrix, GLAMM_VOCAB, PPCR_VOCAB, ["<bbox>"], base_size=BASE_VOCAB)


def test_disagreeing_base_vocabularies_are_refused(glamm_matrix: torch.Tensor) -> None:
    src = {**GLAMM_VOCAB, "hello": 5}
    dst = {**PPCR_VOCAB, "hello": 6}
    with pytest.raises(CheckpointError, match="the tokenizers disagree on 'hello'"):
        remap_added_token_rows(glamm_matrix, src, dst, CARRY, base_size=BASE_VOCAB)


def test_ids_outside_the_matrix_are_refused(glamm_matrix: torch.Tensor) -> None:
    with pytest.raises(CheckpointError, match="outside the"):
        remap_added_token_rows(glamm_matrix, {**GLAMM_VOCAB, "[X]": 99}, PPCR_VOCAB, CARRY, base_size=BASE_VOCAB)
    with pytest.raises(CheckpointError, match="outside the 36 rows"):
        remap_added_token_rows(glamm_matrix, GLAMM_VOCAB, PPCR_VOCAB, CARRY, base_size=BASE_VOCAB, dst_rows=36)


def test_default_size_is_one_past_the_largest_id(glamm_matrix: torch.Tensor) -> None:
    remap = remap_added_token_rows(glamm_matrix, GLAMM_VOCAB, PPCR_VOCAB, CARRY, base_size=BASE_VOCAB)
    assert remap.matrix.shape[0] == max(PPCR_VOCAB.values()) + 1 and remap.padding_rows == 0


def test_read_added_tokens_from_each_tokenizer_file(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "added_tokens.json").write_text(json.dumps({"[SEG]": 32004}))
    assert read_added_tokens(tmp_path / "a") == {"[SEG]": 32004}
    (tmp_path / "b").mkdir()
    decoder = {"32000": {"content": "<image>", "special": True}, "0": {"content": "<unk>"}}
    (tmp_path / "b" / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    assert read_added_tokens(tmp_path / "b") == {"<image>": 32000, "<unk>": 0}
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "tokenizer.json").write_text(json.dumps({"added_tokens": [{"id": 32001, "content": "<pad>"}]}))
    assert read_added_tokens(tmp_path / "c") == {"<pad>": 32001}
    (tmp_path / "d").mkdir()
    with pytest.raises(CheckpointError, match="has no tokenizer files"):
        read_added_tokens(tmp_path / "d")
    (tmp_path / "d" / "added_tokens.json").write_text("[oops")
    with pytest.raises(CheckpointError, match="cannot read the tokenizer files"):
        read_added_tokens(tmp_path / "d")
