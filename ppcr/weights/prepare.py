"""``ppcr prepare weights``: a PPCR base checkpoint from public weights (docs/design.md, "Weights").

Two recipes, both ending in a directory that ``PPCRModel.from_pretrained`` (and a recipe with
``init.source=checkpoint``) loads:

- ``llava``: llava-hf LLaVA-1.5 + SAM's ``.pth``. Both adapters, ``semantic_proj``,
  ``sem_to_input`` and the box head start fresh; the mask decoder is SAM's. The base is public and
  loadable as it is, so the checkpoint *references* it (``config.json`` ``base.kind=reference``,
  as :mod:`ppcr.modeling.checkpoint` does for every public base) instead of copying 14 GB.
- ``glamm`` (the paper's initialisation): GLaMM-GranD-Pretrained is the frozen base, CLIP comes
  from ``--clip``, RefSeg gives the mask decoder, ``semantic_proj`` (``text_hidden_fcs``) and the
  added-token rows, the ``semantic`` adapter is the rank-r SVD of RefSeg − GranD on every LLM
  q/v matrix (error and captured energy per matrix in the report, a ``WARNING`` note when the
  median error is above 0.5), provided GranD is RefSeg's parent: every tensor GLaMM's fine-tuning
  kept frozen must be identical in both, or the conversion is refused
  (:mod:`ppcr.weights.parent_check`). The ``spatial`` adapter starts fresh, and the region
  encoder is dropped. GLaMM's layout is not loadable by transformers, so the converted base is
  *stored* in the checkpoint (``base/llava``, ``base/sam.safetensors``). The prompt
  format (``config.json`` ``prompt``) is GLaMM's: the llava_v1 system prompt, then
  ``The <im_start><image><im_end> provides an overview of the picture.\\n`` before the question,
  and CLIP images are centre-cropped (``model.clip_pad_to_square=false``), as GLaMM was trained.

Tokenizer. PPCR's tokenizer is llava-hf's (``<image>`` 32000, ``<pad>`` 32001) plus ``[SEG]``,
``[BOX]``, ``<sem>`` (and, from GLaMM, ``<im_start>``/``<im_end>``): transformers' LLaVA needs an
``<image>`` token id, GLaMM's tokenizer has none. GLaMM's rows are moved by token string
(:mod:`ppcr.weights.token_rows`). For ``glamm`` the tokenizer comes from ``tokenizer`` or
``llava`` (only its tokenizer files are read), by default llava-hf/llava-1.5-7b-hf.

Memory. The model skeleton is built with its parameters on the ``meta`` device and given
uninitialised storage (:mod:`ppcr.weights.skeleton`), then every tensor is streamed in shard by
shard, so each weight is read once and nothing is initialised at random first. Peak resident
memory for the 7B model ≈ LLaVA in ``dtype`` (bf16: 14.1 GB) + SAM-H in fp32 (2.6 GB) + the
embed_tokens/lm_head matrices held for re-indexing (4 × 0.26 GB) + heads (0.2 GB), about 18 GB,
plus the page cache of the memory-mapped shard being read (reclaimable). Writing uses safetensors'
zero-copy writer. (An estimate from the tensor sizes; the tests measure only tiny models.)

Nothing is downloaded: hub ids must already be in the local Hugging Face cache. The output is
written atomically: a failure at any point leaves ``out`` as it was.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ppcr.config.schema import LoraSpec, ModelSpec, TinySpec, WeightsFrom
from ppcr.errors import CheckpointError, PPCRError
from ppcr.modeling.config import IMAGE_END_TOKEN, IMAGE_START_TOKEN

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ppcr.modeling.config import PPCRConfig, TokenIds
    from ppcr.weights.report import ConversionReport

Progress = Callable[[str], None]

LLAVA_HF_ID = "llava-hf/llava-1.5-7b-hf"
CLIP_ID = "openai/clip-vit-large-patch14-336"
REPORT_NAME = "conversion_report.json"
SVD_SCRATCH = ".semantic-svd"
_SAM_BLOCK = re.compile(r"(?:.*\.)?image_encoder\.blocks\.(\d+)\..+")


@dataclass
class PrepareWeightsResult:
    """What :func:`prepare_weights` wrote and how the conversion went."""

    out: Path
    source: str
    report: ConversionReport
    report_path: Path
    config: PPCRConfig
    seconds: float
    peak_rss_bytes: Optional[int] = None
    notes: list[str] = field(default_factory=list)

    def adapter_summaries(self) -> dict[str, dict[str, Any]]:
        """Per extracted adapter: worst / median / mean relative error and lowest energy."""
        from ppcr.weights.lora_svd import summarize

        return {name: summarize(reports) for name, reports in self.report.adapters.items()}

    def to_dict(self) -> dict[str, Any]:
        mapping = self.report.mapping
        return {
            "out": str(self.out),
            "source": self.source,
            "conversion_report": str(self.report_path),
            "seconds": round(self.seconds, 3),
            "peak_rss_bytes": self.peak_rss_bytes,
            "counts": mapping.counts(),
            "table": mapping.table(),
            "unmapped": [f"{r.source}:{r.key}" for r in mapping.unmapped],
            "missing": list(mapping.missing),
            "adapters": self.report.adapters_dict(),
            "parent_check": self.report.parent_check,
            "tokens": self.report.tokens.to_dict() if self.report.tokens is not None else None,
            "prompt": asdict(self.config.prompt),
            "base": {"kind": self.config.base.kind, "llava": self.config.base.llava, "sam": self.config.base.sam},
            "notes": list(self.notes),
        }


def prepare_weights(
    source: WeightsFrom,
    out: str | Path,
    *,
    llava: str | Path | None = None,
    sam: str | Path | None = None,
    base: str | Path | None = None,
    semantic: str | Path | None = None,
    clip: str | Path | None = None,
    tokenizer: str | Path | None = None,
    rank: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    size: str | TinySpec = "7b",
    dtype: Optional[torch.dtype] = None,
    device: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    copy_base: bool = False,
    progress: Optional[Progress] = None,
) -> PrepareWeightsResult:
    """Convert public weights into a PPCR checkpoint directory ``out`` (see the module docstring).

    Arguments:
        source: ``"llava"`` (needs ``llava`` and ``sam``) or ``"glamm"`` (needs ``base`` =
            GLaMM-GranD-Pretrained, ``semantic`` = GLaMM-RefSeg and, as GLaMM's release has no
            vision tower, ``clip``). Each is a directory, a file or a cached hub id.
        tokenizer: where PPCR's tokenizer comes from (default: ``llava``, or llava-hf for glamm).
        rank, alpha, dropout: the LoRA shape of both adapters (the SVD uses rank and alpha).
        size: ``"7b"`` (llava-1.5-7b-hf architecture; SAM size read from the checkpoint) or a
            :class:`~ppcr.config.schema.TinySpec` (tiny test models; ``"tiny"`` = the defaults).
        dtype: dtype LLaVA is converted into and, for ``glamm``, stored in (default bf16 for 7b,
            float32 for tiny; the added-token rows follow it). SAM and the new heads are float32.
        device: where the SVDs run (e.g. ``"cuda"``); the model itself stays on the CPU.
        seed: initialisation of the parts that start fresh.
        overwrite: replace an existing non-empty ``out``.
        copy_base: for ``llava``, store the base LLaVA and SAM inside ``out`` instead of referring
            to them (by hub id, or by a path relative to ``out``), so ``out`` holds everything.
        progress: called with a short line at each stage.

    Raises :class:`~ppcr.errors.PPCRError` (one line, with a hint) for bad arguments, missing or
    corrupt files and checkpoints of the wrong layout or architecture; nothing is written then.
    """
    started = time.perf_counter()
    say = progress or (lambda _line: None)
    out = Path(out).expanduser()
    tiny = _tiny_spec(size)
    _check_arguments(source, llava=llava, sam=sam, base=base, semantic=semantic, rank=rank, alpha=alpha)
    _check_destination(out, overwrite)
    notes: list[str] = []

    from ppcr.weights.shards import checkpoint_keys, resolve_checkpoint

    say("checking the sources")
    if source == "llava":
        llava_root = resolve_checkpoint(llava).root
        if not (llava_root / "config.json").is_file():
            raise CheckpointError(
                f"{llava} has no config.json; the checkpoint will load it with transformers",
                hint="pass a llava-hf model directory (save_pretrained layout) or its cached hub id",
            )
        sam_checkpoint = resolve_checkpoint(sam)
        if len(sam_checkpoint.shards) != 1:
            raise CheckpointError(f"{sam} is sharded; SAM is expected as one .pth or .safetensors file")
        sam_file = sam_checkpoint.shards[0]
        sam_keys = checkpoint_keys(sam_checkpoint)
        tokenizer_source = tokenizer or llava
    else:
        sam_keys = checkpoint_keys(resolve_checkpoint(base))
        resolve_checkpoint(semantic)
        if clip is not None:
            resolve_checkpoint(clip)
        tokenizer_source = tokenizer or llava or LLAVA_HF_ID
        if sam is not None:
            notes.append(
                f"SAM comes from GLaMM's model.grounding_encoder.*; the SAM checkpoint {sam} was not read"
            )
    sam_size = "tiny" if tiny is not None else _sam_size(sam_keys, str(sam if source == "llava" else base))

    import torch

    from ppcr.io import atomic_directory
    from ppcr.modeling.adapters import SEMANTIC, AdapterSet
    from ppcr.modeling.checkpoint import save_checkpoint
    from ppcr.modeling.config import GLAMM_PROMPT, BaseWeights, PPCRConfig
    from ppcr.modeling.heads import SemanticProjection
    from ppcr.modeling.llava import build_llava
    from ppcr.modeling.model import PPCRModel
    from ppcr.modeling.sam import build_sam, sam_architecture
    from ppcr.weights.assembly import load_glamm, load_llava
    from ppcr.weights.skeleton import materialize, parameters_on_meta

    say(f"reading the tokenizer from {tokenizer_source}")
    tok, token_ids = _ppcr_tokenizer(tokenizer_source, with_image_wrappers=source == "glamm")
    base_size = int(tok.vocab_size)
    vocab = tok.get_vocab()
    config = _llava_config(tiny, tok, token_ids)
    spec = ModelSpec(
        size="tiny" if tiny is not None else "7b",
        sam=sam_size,
        lora=LoraSpec(r=rank, alpha=alpha, dropout=dropout),
        clip_pad_to_square=source == "llava",
        tiny=tiny if tiny is not None else TinySpec(),
    )
    llava_dtype = dtype if dtype is not None else (torch.float32 if tiny is not None else torch.bfloat16)
    arch = sam_architecture(sam_size, spec.tiny)

    with atomic_directory(out) as staging, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        say(f"building the {spec.size} model skeleton (LLaVA in {str(llava_dtype).removeprefix('torch.')}, SAM {sam_size})")
        with parameters_on_meta():
            llava_module = build_llava(config, spec.attn_implementation)
            sam_module = build_sam(arch)
        materialize(llava_module, llava_dtype)
        materialize(sam_module, torch.float32)
        modules: dict[str, nn.Module] = {"llava": llava_module, "sam": sam_module}

        if source == "llava":
            say(f"streaming {llava} and {sam} into the model")
            report = load_llava(modules, llava=llava, sam=sam, ppcr_vocab=vocab, base_size=base_size)
            weights = BaseWeights(kind="reference", llava=_absolute(llava), sam=_absolute(sam_file))
            llava_module.name_or_path = weights.llava  # what peft records as the adapters' base
            notes.append(
                "the base is copied into the checkpoint (copy_base)" if copy_base else
                f"the base is referenced, not copied: config.json points at {weights.llava} and {weights.sam} "
                "(local paths are written relative to the checkpoint folder)"
            )
            notes.append(f"both adapters, semantic_proj, sem_to_input and the box head start fresh (seed {seed})")
        else:
            holder = _semantic_proj_holder(SemanticProjection(config.text_config.hidden_size, arch.prompt_embed_dim))
            modules["semantic_proj"] = holder
            say(
                f"streaming {base}, {semantic}" + (f" and {clip}" if clip else "")
                + f" into the model; rank-{rank} SVD of RefSeg − GranD on every q/v matrix"
            )
            report = load_glamm(
                modules, grand=base, refseg=semantic, clip=clip, ppcr_vocab=vocab,
                adapter_dir=staging / SVD_SCRATCH / SEMANTIC, rank=rank, alpha=alpha, dropout=dropout,
                base_size=base_size, device=device,
            )
            weights = BaseWeights(kind="stored", llava=None, sam=None)
            report.sources["semantic_adapter"] = SEMANTIC  # the scratch copy becomes <out>/semantic
            notes += _glamm_notes(report, base, tokenizer_source, seed)

        model = PPCRModel(spec, llava_module, sam_module, token_ids, tokenizer=tok, base=weights)
        if source == "glamm":
            with torch.no_grad():
                model.semantic_proj.load_state_dict(holder.semantic_proj.state_dict(), strict=True)
            AdapterSet(model.llm, (SEMANTIC,)).load(staging / SVD_SCRATCH)
            model.prompt_format = GLAMM_PROMPT
        notes += _token_notes(report)
        if report.mapping.unmapped:
            notes.append(
                f"{len(report.mapping.unmapped)} source key(s) matched no rule and were not loaded "
                f"(first: {report.mapping.unmapped[0].source}:{report.mapping.unmapped[0].key})"
            )
        report.notes = list(notes)

        say(f"writing {out}")
        # Replaces the staging folder (and the SVD scratch in it). Staging is a sibling of ``out``,
        # so paths relative to it are relative to ``out`` too.
        save_checkpoint(model, staging, store_base=copy_base)
        report_path = report.save(staging / REPORT_NAME)
        saved = PPCRConfig.load(staging)
        saved.extra["prepared_from"] = {
            "source": source,
            "sources": _resolved_sources(report.sources, tokenizer_source, out),
            "rank": rank,
            "alpha": alpha,
            "seed": seed,
            "dtype": str(llava_dtype).removeprefix("torch."),
            "conversion_report": REPORT_NAME,
        }
        _write_config(staging, saved)

    return PrepareWeightsResult(
        out=out,
        source=source,
        report=report,
        report_path=out / report_path.name,
        config=saved,
        seconds=time.perf_counter() - started,
        peak_rss_bytes=_peak_rss(),
        notes=notes,
    )


# --- arguments ----------------------------------------------------------------------------------


def _tiny_spec(size: str | TinySpec) -> Optional[TinySpec]:
    if isinstance(size, TinySpec):
        return size
    if size == "tiny":
        return TinySpec()
    if size == "7b":
        return None
    raise PPCRError(f"unknown model size {size!r}; valid: 7b, tiny")


def _check_arguments(source: str, *, llava, sam, base, semantic, rank: int, alpha: int) -> None:
    if source == "llava":
        needed = {"--llava": llava, "--sam": sam}
        unused = {"--base": base, "--semantic": semantic}
    elif source == "glamm":
        needed = {"--base": base, "--semantic": semantic}
        unused = {}
    else:
        raise PPCRError(f"unknown weights source {source!r}; valid: llava, glamm")
    absent = [flag for flag, value in needed.items() if value is None]
    if absent:
        raise PPCRError(
            f"--from {source} needs {' and '.join(absent)}",
            hint=f"e.g. --llava {LLAVA_HF_ID} --sam sam_vit_h_4b8939.pth"
            if source == "llava"
            else "e.g. --base MBZUAI/GLaMM-GranD-Pretrained --semantic MBZUAI/GLaMM-RefSeg "
            f"--clip {CLIP_ID}",
        )
    extra = [flag for flag, value in unused.items() if value is not None]
    if extra:
        raise PPCRError(f"{' and '.join(extra)} {'is' if len(extra) == 1 else 'are'} only for --from glamm")
    for name, value in (("rank", rank), ("alpha", alpha)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PPCRError(f"LoRA {name} must be a positive integer, got {value!r}")


def _check_destination(out: Path, overwrite: bool) -> None:
    if overwrite or not out.exists():
        return
    if out.is_dir() and not any(out.iterdir()):
        return
    raise PPCRError(f"{out} already exists", hint="choose another --out, or pass --overwrite to replace it")


def _sam_size(keys: list[str], where: str) -> str:
    """vit_h / vit_l / vit_b from the number of image-encoder blocks in the key names."""
    from ppcr.modeling.sam import OFFICIAL_SAM

    blocks = {int(match.group(1)) for key in keys if (match := _SAM_BLOCK.fullmatch(key))}
    for name, arch in OFFICIAL_SAM.items():
        if len(blocks) == arch.encoder_depth:
            return name
    known = ", ".join(f"{n} ({a.encoder_depth})" for n, a in OFFICIAL_SAM.items())
    raise CheckpointError(
        f"{where}: a SAM image encoder with {len(blocks)} blocks matches none of {known}",
        hint="pass an official SAM checkpoint (sam_vit_h_4b8939.pth), or a tiny spec for test models",
    )


# --- tokenizer and architecture -----------------------------------------------------------------


def _ppcr_tokenizer(source: str | Path, *, with_image_wrappers: bool):
    """llava-hf's tokenizer with PPCR's tokens (and GLaMM's image wrappers) added."""
    from tokenizers import AddedToken

    from ppcr.modeling.llava import add_ppcr_tokens, load_tokenizer
    from ppcr.weights.shards import local_directory

    tok = load_tokenizer(local_directory(source))
    token_ids = add_ppcr_tokens(tok)
    if with_image_wrappers:
        missing = [t for t in (IMAGE_START_TOKEN, IMAGE_END_TOKEN) if t not in tok.get_vocab()]
        if missing:
            tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in missing])
    return tok, token_ids


def _llava_config(tiny: Optional[TinySpec], tok, token_ids: TokenIds):
    """The LLaVA configuration of the target architecture, checked against the tokenizer."""
    from ppcr.modeling.build import vocab_rows
    from ppcr.modeling.llava import llava_7b_config, tiny_llava_config

    if tiny is not None:
        return tiny_llava_config(tiny, vocab_rows(len(tok)), token_ids)
    config = llava_7b_config()
    if token_ids.image != config.image_token_index:
        raise CheckpointError(
            f"the tokenizer's <image> id is {token_ids.image}, llava-1.5-7b expects {config.image_token_index}",
            hint=f"use the tokenizer of {LLAVA_HF_ID} (--tokenizer)",
        )
    if len(tok) > config.text_config.vocab_size:
        raise CheckpointError(
            f"the tokenizer has {len(tok)} tokens, more than the {config.text_config.vocab_size} embedding rows",
            hint=f"use the tokenizer of {LLAVA_HF_ID} (--tokenizer)",
        )
    return config


def _semantic_proj_holder(head: nn.Module) -> nn.Module:
    """A module whose state dict names are ``semantic_proj.*``, as the assembly expects."""
    from torch import nn

    holder = nn.Module()
    holder.semantic_proj = head
    return holder


# --- report -------------------------------------------------------------------------------------


def _glamm_notes(report: ConversionReport, base: str | Path, tokenizer_source: str | Path, seed: int) -> list[str]:
    from ppcr.weights.lora_svd import untrusted_warning

    dropped = len({r.key for r in report.mapping.dropped if r.component == "region_encoder"})
    identical = (report.parent_check or {}).get("frozen_tensors_identical", 0)
    notes = [
        (
            f"GranD is RefSeg's parent: all {identical} tensors GLaMM's fine-tuning keeps frozen are identical "
            "in both, so RefSeg − GranD is RefSeg's fine-tuning"
        ),
        (
            "prompts are GLaMM's: the llava_v1 system prompt, then 'The <im_start><image><im_end> provides "
            "an overview of the picture.' before the question (config.json prompt)"
        ),
        "CLIP images are centre-cropped as in GLaMM (model.clip_pad_to_square=false)",
        f"GLaMM's region encoder ({dropped} tensors) is dropped: PPCR has no region inputs",
        f"the spatial adapter, sem_to_input and the box head start fresh (seed {seed})",
        _tokenizer_model_check(base, tokenizer_source),
    ]
    notes += [w for name, reports in report.adapters.items() if (w := untrusted_warning(name, reports))]
    return notes


def _tokenizer_model_check(base: str | Path, tokenizer_source: str | Path) -> str:
    """Compare the SentencePiece models of GLaMM and of PPCR's tokenizer, when both have one."""
    from ppcr.weights.shards import local_directory, resolve_checkpoint

    glamm = resolve_checkpoint(base).root / "tokenizer.model"
    try:
        ours = local_directory(tokenizer_source) / "tokenizer.model"
    except CheckpointError:
        ours = None
    if not glamm.is_file() or ours is None or not ours.is_file():
        return "base vocabulary not compared (no tokenizer.model on both sides); ids below the added tokens are assumed shared"
    if _sha256(glamm) == _sha256(ours):
        return "GLaMM's and PPCR's tokenizer.model are identical (same base vocabulary)"
    return (
        "WARNING: GLaMM's tokenizer.model differs from PPCR's tokenizer's; base-vocabulary rows are copied by id, "
        "check that both are the Llama/Vicuna vocabulary"
    )


def _token_notes(report: ConversionReport) -> list[str]:
    tokens = report.tokens
    if tokens is None:
        return []
    notes = []
    if tokens.carried:
        notes.append("token rows carried by string: " + ", ".join(sorted(tokens.carried)))
    if tokens.initialised:
        notes.append("token rows starting at the mean of the base rows: " + ", ".join(sorted(tokens.initialised)))
    if tokens.not_carried:
        notes.append("source tokens not carried over: " + ", ".join(sorted(tokens.not_carried)))
    return notes


def _resolved_sources(sources: Mapping[str, str], tokenizer_source: str | Path, out: Path) -> dict[str, str]:
    """Where each part came from: hub ids as they are, local paths relative to the checkpoint ``out``."""
    from ppcr.modeling.config import portable_path

    resolved = {label: _absolute(value) for label, value in sources.items() if label != "semantic_adapter"}
    resolved["tokenizer"] = _absolute(tokenizer_source)
    return {label: portable_path(value, out) for label, value in resolved.items()}


def _absolute(source: str | Path) -> str:
    """A local path made absolute (the checkpoint is read from anywhere); a hub id unchanged."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else str(source)


def _write_config(directory: Path, config: PPCRConfig) -> None:
    from ppcr.io import atomic_write_text
    from ppcr.modeling.config import CONFIG_NAME

    atomic_write_text(directory / CONFIG_NAME, config.to_json())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _peak_rss() -> Optional[int]:
    """This process's peak resident memory in bytes (Linux reports KiB), if known."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024
    except (ImportError, OSError):
        return None
