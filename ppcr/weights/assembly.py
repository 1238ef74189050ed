"""PPCR's initial weights from released checkpoints: the composition behind ``ppcr prepare weights``.

The caller builds PPCR's (randomly initialised, materialised) modules and passes them by component:
``{"llava": LlavaForConditionalGeneration, "sam": Sam, "semantic_proj": <module whose state dict
has semantic_proj.0.* / semantic_proj.2.*>}``; these functions fill them and return the
:class:`~ppcr.weights.report.ConversionReport`. Two recipes (docs/design.md, "Weights"):

- :func:`load_llava`: llava-hf gives the LLM, CLIP and projector, SAM's ``.pth`` gives SAM;
  ``semantic_proj`` keeps its fresh initialisation; no adapter.
- :func:`load_glamm`: GLaMM-GranD-Pretrained is the frozen base (LLM, projector, SAM image and
  prompt encoders), CLIP comes from the ``clip`` source (GLaMM's release has no vision tower),
  GLaMM-RefSeg gives the mask decoder, ``semantic_proj`` (its ``text_hidden_fcs``) and the
  ``embed_tokens``/``lm_head`` matrices, and the ``semantic`` adapter is the rank-``r`` SVD of
  RefSeg − GranD on every LLM q_proj/v_proj, written in peft's layout. That SVD is RefSeg's LoRA
  only if GranD is RefSeg's parent, so the same pass requires every tensor GLaMM's fine-tuning
  kept frozen to be identical in both (:mod:`ppcr.weights.parent_check`) and refuses otherwise.

Each recipe first *plans*: it maps every key name (reading no tensor data) and refuses, in seconds,
a wrong layout or a parameter no source would provide. Then each checkpoint is streamed shard by
shard straight into the modules, so peak memory stays near the model plus one shard.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ppcr.errors import CheckpointError
from ppcr.weights.glamm_mapping import GLAMM, GLAMM_BASE_VOCAB, GLAMM_CARRIED_TOKENS, TOKEN_ROW_TARGETS
from ppcr.weights.key_mapping import KeyMapping, MappedKey, check_layout, decide, map_tensors
from ppcr.weights.report import ConversionReport, MappingReport
from ppcr.weights.shards import Checkpoint, checkpoint_keys, iter_tensors, resolve_checkpoint
from ppcr.weights.standard_mappings import CLIP, KNOWN_LAYOUTS, LLAVA_HF, SAM

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ppcr.weights.lora_svd import Method
    from ppcr.weights.token_rows import TokenRowRemap


@dataclass(frozen=True)
class Source:
    """One checkpoint to read: a label for the report, where it is, its layout, what to take from it."""

    label: str
    location: str | Path
    mapping: KeyMapping
    take: Callable[[MappedKey], bool] | None = None


def load_llava(
    modules: Mapping[str, nn.Module],
    *,
    llava: str | Path,
    sam: str | Path,
    ppcr_vocab: Mapping[str, int],
    base_size: int = GLAMM_BASE_VOCAB,
    strict: bool = True,
) -> ConversionReport:
    """Fill ``modules["llava"]`` from a llava-hf checkpoint and ``modules["sam"]`` from SAM's ``.pth``.

    ``ppcr_vocab`` maps PPCR's added tokens (at least) to their ids; llava-hf's own added tokens
    (``<image>``, ``<pad>``) are carried by string, PPCR's new ones start at the base-row mean.
    """
    from ppcr.weights.token_rows import read_added_tokens

    expected = _state_names(modules, ("llava", "sam"))
    src_vocab = read_added_tokens(resolve_checkpoint(llava).root)
    carry = [t for t, i in src_vocab.items() if i >= base_size and t in ppcr_vocab]
    _check_token_rows(modules["llava"], src_vocab, ppcr_vocab, carry, base_size)
    sources = [Source("llava", llava, LLAVA_HF), Source("sam", sam, SAM)]
    report, held, _ = load_sources(modules, sources, expected, hold=TOKEN_ROW_TARGETS, strict=strict)
    tokens = _place_token_rows(modules["llava"], held, src_vocab, ppcr_vocab, carry, base_size)
    return ConversionReport(mapping=report, tokens=tokens, sources={"llava": str(llava), "sam": str(sam)})


def load_glamm(
    modules: Mapping[str, nn.Module],
    *,
    grand: str | Path,
    refseg: str | Path,
    clip: str | Path | None,
    ppcr_vocab: Mapping[str, int],
    adapter_dir: str | Path,
    rank: int = 8,
    alpha: float = 16,
    dropout: float = 0.05,
    carry_tokens: Sequence[str] = GLAMM_CARRIED_TOKENS,
    base_size: int = GLAMM_BASE_VOCAB,
    base_rows_from: Literal["refseg", "grand"] = "refseg",
    svd_method: Method = "auto",
    device: str | None = None,
    strict: bool = True,
) -> ConversionReport:
    """Fill the modules from GLaMM GranD (base) + RefSeg (heads) + CLIP and write the ``semantic`` adapter.

    ``base_rows_from`` picks the 32000 base rows of embed_tokens/lm_head: ``refseg`` (default;
    GLaMM trained these matrices in full, so the semantic stage then reproduces RefSeg exactly)
    or ``grand``; the added-token rows (``carry_tokens``, e.g. ``[SEG]``) always come from RefSeg.
    ``clip`` may be None only if the GranD checkpoint carries its own vision tower.
    """
    from ppcr.weights.adapter_files import save_peft_adapter
    from ppcr.weights.lora_svd import LORA_TARGET_REGEX, extract_adapter
    from ppcr.weights.parent_check import CHILD, PARENT, ParentCheck
    from ppcr.weights.token_rows import read_added_tokens

    llava = modules["llava"]
    expected = _state_names(modules, ("llava", "sam"))
    expected |= _state_names(modules, ("semantic_proj",), prefix="semantic_proj.")
    src_vocab = read_added_tokens(resolve_checkpoint(refseg).root)
    _check_token_rows(llava, src_vocab, ppcr_vocab, carry_tokens, base_size)

    def from_refseg(decision: MappedKey) -> bool:
        return (
            decision.component == "semantic_proj"
            or decision.target.startswith("mask_decoder.")
            or decision.target in TOKEN_ROW_TARGETS
        )

    sources = [
        Source("grand", grand, GLAMM, lambda d: not from_refseg(d)),
        Source("refseg", refseg, GLAMM, from_refseg),
    ]
    if clip is not None:
        sources.append(Source("clip", clip, CLIP))
    report, held, resolved = load_sources(modules, sources, expected, hold=TOKEN_ROW_TARGETS, strict=strict)

    # The adapter: both checkpoints streamed once more, side by side, keeping only q/v pairs
    # (and, if asked for, GranD's token matrices on the way), and checking that GranD is
    # RefSeg's parent (a difference stops the stream at once).
    targets = [name for name, _ in llava.named_modules() if re.fullmatch(LORA_TARGET_REGEX, name)]
    grand_rows: dict[str, torch.Tensor] = {}
    keep = TOKEN_ROW_TARGETS if base_rows_from == "grand" else ()
    parent = ParentCheck(grand, refseg)
    state, svd_reports = extract_adapter(
        _renamed(parent.watch(iter_tensors(resolved["refseg"]), CHILD), "refseg"),
        _renamed(
            parent.watch(iter_tensors(resolved["grand"]), PARENT), "grand", siphon=grand_rows, siphon_targets=keep
        ),
        targets,
        rank,
        alpha,
        method=svd_method,
        device=device,
    )
    lineage = parent.finish()
    save_peft_adapter(
        adapter_dir, state, rank=rank, alpha=alpha, dropout=dropout, base_model_name_or_path=str(grand)
    )

    if base_rows_from == "grand":
        for target in TOKEN_ROW_TARGETS:
            mixed = grand_rows[target].clone()
            mixed[base_size:] = held[target][base_size:]
            held[target] = mixed
    tokens = _place_token_rows(llava, held, src_vocab, ppcr_vocab, carry_tokens, base_size)
    return ConversionReport(
        mapping=report,
        tokens=tokens,
        adapters={"semantic": svd_reports},
        parent_check=lineage,
        sources={
            "grand": str(grand),
            "refseg": str(refseg),
            **({"clip": str(clip)} if clip is not None else {}),
            "semantic_adapter": str(adapter_dir),
        },
    )


def load_sources(
    modules: Mapping[str, nn.Module],
    sources: Sequence[Source],
    expected: Collection[str],
    *,
    hold: Collection[str] = (),
    strict: bool = True,
) -> tuple[MappingReport, dict[str, torch.Tensor], dict[str, Checkpoint]]:
    """Plan, then stream every source into ``modules``; targets in ``hold`` are returned instead.

    The plan maps all key names without reading tensors: a wrong layout, a target two sources
    provide, or (with ``strict``) an expected parameter no source provides is refused before any
    data is read. Returns the streaming report, the held tensors and the resolved checkpoints.
    """
    from ppcr.weights.loading import copy_components

    resolved = {source.label: resolve_checkpoint(source.location) for source in sources}
    # Targets spelled as the modules being filled spell them (transformers-version differences).
    mappings = {source.label: source.mapping.onto(expected) for source in sources}
    planned = MappingReport()
    for source in sources:
        keys = checkpoint_keys(resolved[source.label])
        check_layout(keys, source.mapping, str(source.location), KNOWN_LAYOUTS)
        for key in keys:
            planned.record(source.label, key, decide(mappings[source.label], key, source.label, source.take))
    missing = planned.expect(expected)
    if strict and missing:
        raise CheckpointError(
            f"{len(missing)} parameters would come from no source, e.g. {missing[0]}",
            hint=_missing_hint(missing, planned),
        )

    report = MappingReport()
    held: dict[str, torch.Tensor] = {}
    for source in sources:
        tensors = iter_tensors(resolved[source.label])
        stream = map_tensors(tensors, mappings[source.label], report, source.label, source.take)
        copy_components(modules, _holding(stream, hold, held))
    report.expect(expected)
    return report, held, resolved


def _missing_hint(missing: Sequence[str], planned: MappingReport) -> str:
    """What to do about parameters no source provides: pass CLIP only if no source has a tower."""
    tower = "model.vision_tower."
    if missing[0].startswith(tower) and not any(t.startswith(tower) for t in planned.targets()):
        return "pass the CLIP checkpoint (--clip)"
    return "check that the sources match the model configuration"


def _holding(
    stream: Iterable[tuple[MappedKey, torch.Tensor]], hold: Collection[str], held: dict[str, torch.Tensor]
) -> Iterator[tuple[MappedKey, torch.Tensor]]:
    for decision, tensor in stream:
        if decision.target in hold:
            held[decision.target] = tensor
        else:
            yield decision, tensor


def _renamed(
    stream: Iterator[tuple[str, torch.Tensor]],
    label: str,
    siphon: dict[str, torch.Tensor] | None = None,
    siphon_targets: Collection[str] = (),
) -> Iterator[tuple[str, torch.Tensor]]:
    """The kept tensors of a GLaMM checkpoint's ``stream`` (GLaMM's names) under their target
    names (the report is a scratch one). Every kept tensor is yielded, not only the LLM's, so two
    such streams read side by side stay at the same place in their checkpoints.
    """
    for decision, tensor in map_tensors(stream, GLAMM, MappingReport(), label):
        if siphon is not None and decision.target in siphon_targets:
            siphon[decision.target] = tensor
        yield decision.target, tensor


def _place_token_rows(
    llava: nn.Module,
    held: Mapping[str, torch.Tensor],
    src_vocab: Mapping[str, int],
    ppcr_vocab: Mapping[str, int],
    carry: Sequence[str],
    base_size: int,
) -> TokenRowRemap:
    """Re-index embed_tokens and lm_head to PPCR's token ids and copy them into the LLaVA module."""
    from ppcr.weights.loading import copy_components
    from ppcr.weights.token_rows import remap_added_token_rows

    slots = llava.state_dict(keep_vars=True)
    first = None
    for target in TOKEN_ROW_TARGETS:
        remap = remap_added_token_rows(
            held[target], src_vocab, ppcr_vocab, carry, base_size=base_size, dst_rows=slots[target].shape[0]
        )
        copy_components({"llava": llava}, [(MappedKey(target, target, "llava"), remap.matrix)])
        first = first or remap
    return first


def _check_token_rows(
    llava: nn.Module, src_vocab: Mapping[str, int], ppcr_vocab: Mapping[str, int], carry: Sequence[str], base_size: int
) -> None:
    """Validate the vocabularies before any tensor is read, by remapping a one-column placeholder."""
    import torch

    from ppcr.weights.token_rows import remap_added_token_rows

    rows = llava.state_dict()[TOKEN_ROW_TARGETS[0]].shape[0]
    placeholder = torch.zeros(max([base_size - 1, *src_vocab.values()]) + 1, 1)
    remap_added_token_rows(placeholder, src_vocab, ppcr_vocab, carry, base_size=base_size, dst_rows=rows)


def _state_names(modules: Mapping[str, nn.Module], components: Iterable[str], prefix: str = "") -> set[str]:
    names: set[str] = set()
    for component in components:
        if component not in modules:
            raise CheckpointError(f"no module was given for component {component!r}")
        names |= {n for n in modules[component].state_dict() if n.startswith(prefix)}
    return names
