"""PPCR checkpoint directories: write atomically, read strictly.

Layout::

    config.json              PPCRConfig: resolved model spec, token ids, prompt format, base weights, recipe
    semantic/                peft layout: adapter_config.json + adapter_model.safetensors
    spatial/                 (absent for spatial_prompt=none)
    heads.safetensors        token_rows.*, semantic_proj.*, sem_to_input.*, box_head.*, mask_decoder.*
    tokenizer/               save_pretrained of the tokenizer (with [SEG] [BOX] <sem>)
    README.md                the model card (ppcr.modeling.model_card); never read when loading
    base/llava/              only for a randomly initialised base: LLaVA save_pretrained (no LoRA)
    base/sam.safetensors     ... and SAM in segment-anything's key layout

A public base (llava-hf hub id or directory, official SAM ``.pth``) is referenced, not copied: a
hub id as it is, a local path relative to the checkpoint folder.
Everything is built in a temporary sibling directory and renamed into place, so a crash never
leaves a half-written checkpoint. Loading rebuilds the same modules and fills them strictly:
a missing, extra or mis-shaped tensor is a one-line :class:`~ppcr.errors.CheckpointError`.
Which modules and adapters a saved variant has is :mod:`ppcr.modeling.variant`'s answer, the one
the model's constructor builds from. This module never imports the model (its class is passed
in), so ``model.py`` imports it and no import cycle exists.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from ppcr.config.schema import LossSpec, ModelSpec
from ppcr.errors import CheckpointError
from ppcr.io import atomic_directory, destination_of
from ppcr.modeling.config import CONFIG_NAME, BaseWeights, PPCRConfig, PromptFormat, is_checkpoint_relative
from ppcr.modeling.variant import adapter_names, same_box_head, trained_module_paths

if TYPE_CHECKING:  # pragma: no cover
    from ppcr.modeling.model import PPCRModel
    from ppcr.modeling.model_card import MetricsArgument

HEADS_FILE = "heads.safetensors"
TOKENIZER_DIR = "tokenizer"
BASE_LLAVA_DIR = "base/llava"
BASE_SAM_FILE = "base/sam.safetensors"
# Spec fields that change tensor shapes of the shared parts; they must match the checkpoint.
ARCHITECTURE_FIELDS = ("size", "sam", "tiny")


LLM_PREFIX = "llm."
LLAVA_PREFIX = "llm.base_model.model."
SAM_PREFIX = "sam."


def _under(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` below ``prefix``, with the prefix removed, as CPU tensors."""
    return {k[len(prefix) :]: v.detach().to("cpu").contiguous() for k, v in state.items() if k.startswith(prefix)}


def base_llava_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The base LLaVA's weights without LoRA (peft's ``base_layer`` wrappers unwrapped)."""
    return {
        key.replace(".base_layer.", "."): value
        for key, value in _under(state, LLAVA_PREFIX).items()
        if "lora_" not in key
    }


def heads_state(model: "PPCRModel", state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every trainable non-LoRA tensor, keyed ``<module name>.<parameter>``."""
    result = {}
    for name, path in model.trainable_module_paths().items():
        own = set(model.get_submodule(path).state_dict())
        for key, value in _under(state, f"{path}.").items():
            if key in own:
                result[f"{name}.{key}"] = value
    return result


def stores_base(model: "PPCRModel") -> bool:
    """Whether a saved checkpoint must hold the base weights itself: a model with no referenced
    base, or one whose base training changed (``model.unfreeze``); a referenced public base is
    only valid while the base is untouched by training."""
    base = model.base
    return base is None or base.kind != "reference" or bool(model.spec.unfreeze)


def save_checkpoint(
    model: "PPCRModel",
    directory: str | Path,
    *,
    state_dict: Optional[dict[str, torch.Tensor]] = None,
    recipe: Optional[dict] = None,
    store_base: bool = False,
    metrics: "MetricsArgument" = None,
    card_location: Optional[str] = None,
) -> Path:
    """Write ``model`` (or ``state_dict``, keyed like ``model.state_dict()``) to ``directory``.

    An existing directory is replaced atomically. A referenced public base is written relative to
    ``directory`` (see :class:`~ppcr.modeling.config.BaseWeights`); ``store_base`` copies it in
    instead, so the checkpoint holds everything it needs. ``metrics`` (see
    :func:`~ppcr.modeling.model_card.collect_evaluations`; default: the evaluations found beside
    ``directory``) go into the model card, whose loading snippet names ``card_location``
    (default: ``directory``, or the folder the trainer's temporary ``directory`` becomes).
    """
    from safetensors.torch import save_file

    from ppcr.modeling.llava import quiet_progress
    from ppcr.modeling.model_card import collect_evaluations, write_model_card

    if model.tokenizer is None:
        raise CheckpointError("cannot save a model without its tokenizer", hint="build it with build_model")
    state = state_dict if state_dict is not None else model.state_dict()
    expected = set(model.state_dict())
    if set(state) != expected:
        missing = sorted(expected - set(state))
        extra = sorted(set(state) - expected)
        raise CheckpointError(
            f"state_dict does not match the model: {len(missing)} missing, {len(extra)} unexpected key(s) "
            f"(e.g. {(missing or extra)[0]})"
        )
    directory = Path(directory)
    destination = destination_of(directory)  # the trainer hands us its own temporary folder
    evaluations = collect_evaluations(metrics, destination)
    base = model.base
    with atomic_directory(directory) as tmp:
        if store_base or stores_base(model):
            with quiet_progress():
                model.llava.save_pretrained(tmp / BASE_LLAVA_DIR, state_dict=base_llava_state(state))
            save_file(_under(state, SAM_PREFIX), str(tmp / BASE_SAM_FILE), metadata={"format": "pt"})
            saved_base = BaseWeights(kind="stored", llava=f"./{BASE_LLAVA_DIR}", sam=f"./{BASE_SAM_FILE}")
        else:
            saved_base = base.relative_to(directory)
        model.adapters.save(tmp, base_name_or_path=saved_base.llava, state_dict=_under(state, LLM_PREFIX))
        save_file(heads_state(model, state), str(tmp / HEADS_FILE), metadata={"format": "pt"})
        model.tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        config = PPCRConfig(
            model=model.spec, base=saved_base, token_ids=model.token_ids, recipe=recipe, prompt=prompt_format(model)
        )
        (tmp / CONFIG_NAME).write_text(config.to_json(), encoding="utf-8")
        write_model_card(tmp, config, evaluations, card_location or destination.as_posix())
    return directory


def prompt_format(model: "PPCRModel") -> PromptFormat:
    """The prompt format a model's weights expect (``model.prompt_format``)."""
    return model.prompt_format


def _check_spec(saved: ModelSpec, wanted: ModelSpec, directory: Path) -> None:
    for name in ARCHITECTURE_FIELDS:
        if getattr(saved, name) != getattr(wanted, name):
            raise CheckpointError(
                f"checkpoint {directory} has model.{name}={getattr(saved, name)!r}, "
                f"the recipe asks for {getattr(wanted, name)!r}",
                hint="use the checkpoint's architecture or initialise from matching weights",
            )
    for name in ("r", "alpha", "target_modules"):
        if getattr(saved.lora, name) != getattr(wanted.lora, name):
            raise CheckpointError(
                f"checkpoint {directory} has LoRA {name}={getattr(saved.lora, name)!r}, "
                f"the recipe asks for {getattr(wanted.lora, name)!r}"
            )


def _load_heads(model: "PPCRModel", directory: Path, saved_modules: set[str], skip: set[str]) -> list[str]:
    """Fill the trainable modules from ``heads.safetensors``; return the names left fresh.

    ``saved_modules`` are the modules the saved variant has; ``skip`` those whose saved weights
    belong to a different architecture (another box head) and must not be loaded.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ppcr.modeling.sam import check_state_dict

    path = directory / HEADS_FILE
    if not path.is_file():
        raise CheckpointError(f"missing {path}", hint="the checkpoint is incomplete; re-save it")
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise CheckpointError(f"cannot read {path}: {error}") from None
    fresh = []
    modules = model.trainable_modules()
    for name, module in modules.items():
        prefix = f"{name}."
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if name in skip or name not in saved_modules:
            fresh.append(name)
            continue
        check_state_dict(module, sub, f"{path} [{name}]")
        module.load_state_dict(sub, strict=True)
    known = tuple(f"{name}." for name in [*modules, *saved_modules])
    stray = [k for k in state if not k.startswith(known)]
    if stray:
        raise CheckpointError(f"{path} has unexpected tensor(s) (e.g. {stray[0]})")
    return fresh


def _base_source(base: BaseWeights, value: str, directory: Path, what: str) -> str:
    """Where the base ``what`` is read from; a local path that is gone is a clear error."""
    import os

    source = base.resolve(value, directory)
    if (is_checkpoint_relative(value) or os.path.isabs(value)) and not os.path.exists(source):
        if base.kind == "stored":
            raise CheckpointError(f"missing {source}", hint="the checkpoint is incomplete; re-save it")
        shown = f"{value} (= {source})" if is_checkpoint_relative(value) else value
        raise CheckpointError(
            f"the checkpoint {directory} refers to its base {what} at {shown}, which does not exist",
            hint="move the checkpoint together with its base, or prepare it with --copy-base to hold the base",
        )
    return source


def load_checkpoint(
    directory: str | Path,
    *,
    model_class: "type[PPCRModel]",
    spec: Optional[ModelSpec] = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    spec_overrides: Optional[dict] = None,
) -> "PPCRModel":
    """Rebuild a saved model as a ``model_class`` (:class:`~ppcr.modeling.model.PPCRModel`).

    ``spec=None`` restores exactly what was saved. With a ``spec`` (a recipe initialising from a
    checkpoint) the architecture must match, but the variant may differ: parts the checkpoint
    has are loaded strictly, parts it lacks (e.g. the attention box head, or the ``spatial``
    adapter of a ``none`` checkpoint) keep their fresh initialisation, and parts the new variant
    does not use are ignored. ``spec_overrides`` replaces top-level fields of the saved spec
    (e.g. ``{"attn_implementation": "eager"}``).
    """
    from ppcr.modeling.adapters import AdapterSet
    from ppcr.modeling.llava import add_ppcr_tokens, load_llava, load_tokenizer
    from ppcr.modeling.sam import build_sam, load_sam_weights, sam_architecture

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    config = PPCRConfig.load(directory)
    wanted = spec if spec is not None else config.model
    if spec_overrides:
        wanted = dataclasses.replace(wanted, **spec_overrides)
    _check_spec(config.model, wanted, directory)

    tokenizer_dir = directory / TOKENIZER_DIR
    if not tokenizer_dir.is_dir():
        raise CheckpointError(f"missing {tokenizer_dir}", hint="the checkpoint is incomplete; re-save it")
    tokenizer = load_tokenizer(tokenizer_dir)
    token_ids = add_ppcr_tokens(tokenizer)
    if token_ids != config.token_ids:
        raise CheckpointError(f"the tokenizer in {tokenizer_dir} does not give the token ids in {CONFIG_NAME}")

    base = config.base
    if base.llava is None or base.sam is None:
        raise CheckpointError(f"{directory / CONFIG_NAME} does not say where the base LLaVA and SAM are")
    llava_source = _base_source(base, base.llava, directory, "LLaVA")
    sam_source = _base_source(base, base.sam, directory, "SAM")
    llava = load_llava(llava_source, dtype=dtype, device=device, attn_implementation=wanted.attn_implementation)
    sam = build_sam(sam_architecture(wanted.sam, wanted.tiny))
    load_sam_weights(sam, sam_source, size=wanted.sam)

    if base.kind == "reference":  # where the base was read from, usable from anywhere
        model_base = BaseWeights(kind="reference", llava=llava_source, sam=sam_source)
    else:
        model_base = BaseWeights(kind="stored", llava=None, sam=None)
    model = model_class(wanted, llava, sam, token_ids, tokenizer=tokenizer, base=model_base)
    saved = config.model
    loadable = tuple(n for n in model.adapters.names if n in adapter_names(saved))
    AdapterSet(model.llm, loadable).load(directory)
    skip = set() if same_box_head(saved, wanted) else {"box_head"}
    _load_heads(model, directory, set(trained_module_paths(saved)), skip)
    model.recipe = config.recipe
    model.prompt_format = config.prompt
    model.source_dir = directory
    saved_loss = (config.recipe or {}).get("loss")
    if isinstance(saved_loss, dict):
        try:
            model.loss_weights = LossSpec(**saved_loss)
        except TypeError:
            pass  # a recipe from another version: keep the default weights
    model.to(dtype=dtype)
    if device is not None:
        model.to(device)
    model.eval()
    return model
