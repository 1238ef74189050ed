"""Move the trained rows of added tokens from a source vocabulary to PPCR's token ids.

``embed_tokens`` and ``lm_head`` hold one row per token id. GLaMM and PPCR share the 32000-token
Llama vocabulary (ids below ``base_size``) but number their added tokens differently: GLaMM has
``<im_start>`` 32000 … ``[SEG]`` 32004, while PPCR uses the llava-hf tokenizer where 32000 is
``<image>`` and 32001 ``<pad>``, followed by PPCR's own tokens. Copying rows by id would give
``<image>`` GLaMM's ``<im_start>`` row and lose ``[SEG]``; rows are therefore matched by token
*string*. Base rows are copied unchanged; added tokens PPCR has but the source lacks (``<image>``,
``[BOX]``, ``<sem>`` …) and rows past the tokenizer's length (padding to a multiple of 64) start at
the mean of the base rows, as is usual for new tokens.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ppcr.errors import CheckpointError

if TYPE_CHECKING:
    import torch


@dataclass
class TokenRowRemap:
    """The remapped matrix and, per token, where its row came from."""

    matrix: torch.Tensor
    carried: dict[str, tuple[int, int]] = field(default_factory=dict)  # token -> (source id, PPCR id)
    initialised: dict[str, int] = field(default_factory=dict)  # PPCR token -> id, mean-initialised
    not_carried: dict[str, int] = field(default_factory=dict)  # source added token -> id, left behind
    padding_rows: int = 0  # rows past the tokenizer's length, mean-initialised

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": int(self.matrix.shape[0]),
            "carried": {t: {"source_id": s, "ppcr_id": d} for t, (s, d) in self.carried.items()},
            "initialised": dict(self.initialised),
            "not_carried": dict(self.not_carried),
            "padding_rows": self.padding_rows,
        }


def remap_added_token_rows(
    src_matrix: torch.Tensor,
    src_vocab: Mapping[str, int],
    dst_vocab: Mapping[str, int],
    tokens: Sequence[str],
    *,
    base_size: int,
    dst_rows: int | None = None,
) -> TokenRowRemap:
    """Build PPCR's ``[dst_rows, d]`` matrix from a source one, carrying ``tokens`` by string.

    Arguments:
        src_matrix: the source ``embed_tokens`` or ``lm_head`` weight, one row per source id.
        src_vocab, dst_vocab: token -> id of the source and PPCR tokenizers; at least their added
            tokens (full vocabularies are accepted and are cross-checked on the shared part).
        tokens: added tokens whose trained rows must be carried over (e.g. ``[SEG]``); each must
            exist in both vocabularies.
        base_size: ids below this are the shared base vocabulary and are copied as they are.
        dst_rows: rows of the result (PPCR's embedding size); default: one past the largest id.

    Raises CheckpointError when the vocabularies disagree on the shared part, an id is out of
    range of its matrix, or a token to carry is absent from either side.
    """

    if src_matrix.dim() != 2 or src_matrix.shape[0] < base_size:
        raise CheckpointError(
            f"token matrix of shape {list(src_matrix.shape)} has fewer than the {base_size} base rows"
        )
    if dst_rows is None:
        dst_rows = max([base_size - 1, *dst_vocab.values()]) + 1
    if dst_rows < base_size:
        raise CheckpointError(f"PPCR's embedding has {dst_rows} rows, fewer than the {base_size} base tokens")
    _check_ids("source", src_vocab, int(src_matrix.shape[0]))
    _check_ids("PPCR", dst_vocab, dst_rows)
    _check_shared_vocabulary(src_vocab, dst_vocab, base_size)
    for token in tokens:
        for side, vocab in (("source", src_vocab), ("PPCR", dst_vocab)):
            if token not in vocab:
                raise CheckpointError(
                    f"token {token} is not in the {side} tokenizer",
                    hint="the tokenizer does not match the checkpoint; use the tokenizer saved with it",
                )
            if vocab[token] < base_size:
                raise CheckpointError(
                    f"token {token} has id {vocab[token]}, inside the base vocabulary ({side} tokenizer)"
                )

    base = src_matrix[:base_size]
    mean = base.double().mean(dim=0).to(src_matrix.dtype)
    matrix = mean.expand(dst_rows, -1).clone()
    matrix[:base_size] = base
    remap = TokenRowRemap(matrix=matrix)
    for token in tokens:
        remap.carried[token] = (src_vocab[token], dst_vocab[token])
        matrix[dst_vocab[token]] = src_matrix[src_vocab[token]]
    covered = set(range(base_size)) | {dst for _, dst in remap.carried.values()}
    for token, index in sorted(dst_vocab.items(), key=lambda item: item[1]):
        if index not in covered:
            remap.initialised[token] = index
            covered.add(index)
    remap.not_carried = {t: i for t, i in src_vocab.items() if i >= base_size and t not in remap.carried}
    remap.padding_rows = dst_rows - len(covered)
    return remap


def read_added_tokens(directory: str | Path) -> dict[str, int]:
    """Token -> id of a tokenizer directory's added tokens (``added_tokens.json``,
    ``tokenizer_config.json``'s ``added_tokens_decoder`` or ``tokenizer.json``'s ``added_tokens``).

    Reading the files directly avoids loading GLaMM's slow SentencePiece tokenizer (it needs the
    ``sentencepiece`` package, which PPCR does not require).
    """
    root = Path(directory)
    found: dict[str, int] = {}
    try:
        if (root / "added_tokens.json").is_file():
            data = json.loads((root / "added_tokens.json").read_text(encoding="utf-8"))
            found.update({str(t): int(i) for t, i in data.items()})
        if (root / "tokenizer_config.json").is_file():
            data = json.loads((root / "tokenizer_config.json").read_text(encoding="utf-8"))
            for index, entry in (data.get("added_tokens_decoder") or {}).items():
                found.setdefault(str(entry["content"]), int(index))
        if (root / "tokenizer.json").is_file():
            data = json.loads((root / "tokenizer.json").read_text(encoding="utf-8"))
            for entry in data.get("added_tokens") or []:
                found.setdefault(str(entry["content"]), int(entry["id"]))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"cannot read the tokenizer files in {root}: {error}") from None
    if not found:
        raise CheckpointError(
            f"{root} has no tokenizer files with added tokens",
            hint="expected added_tokens.json, tokenizer_config.json or tokenizer.json",
        )
    return found


def _check_ids(side: str, vocab: Mapping[str, int], rows: int) -> None:
    bad = next(((t, i) for t, i in vocab.items() if not 0 <= i < rows), None)
    if bad is not None:
        raise CheckpointError(f"{side} token {bad[0]} has id {bad[1]}, outside the {rows} rows of its matrix")


def _check_shared_vocabulary(
    src_vocab: Mapping[str, int], dst_vocab: Mapping[str, int], base_size: int
) -> None:
    """Tokens of the shared base vocabulary must have the same id on both sides."""
    for token, src_id in src_vocab.items():
        dst_id = dst_vocab.get(token)
        if dst_id is None or (src_id >= base_size and dst_id >= base_size):
            continue
        if src_id != dst_id:
            raise CheckpointError(
                f"the tokenizers disagree on {token!r} (id {src_id} in the source, {dst_id} in PPCR's)",
                hint="both must share the same base vocabulary (Llama/Vicuna SentencePiece)",
            )
