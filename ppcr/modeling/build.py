"""From a recipe to a :class:`~ppcr.modeling.model.PPCRModel`.

``recipe.init.source`` picks where the weights come from:

- ``random`` — a randomly initialised base (deterministic from ``recipe.seed``). For
  ``model.size=tiny`` this is the CPU model: tiny CLIP/Llama/SAM of the real classes and a
  tokenizer trained on Shapes-Ref text. For ``7b`` the paper architecture with random weights
  and the tokenizer of ``init.tokenizer``/``init.llava`` (GPU smoke tests only).
- ``llava`` — LLaVA from ``init.llava`` (hub id or ``save_pretrained`` directory; its tokenizer
  from ``init.tokenizer`` or the same place) and SAM from ``init.sam_checkpoint`` (official key
  layout), both strictly. The architecture is the one stored with the weights; ``model.sam``
  must name the SAM size of the checkpoint.
- ``checkpoint`` — a PPCR checkpoint directory (``init.checkpoint``); the recipe's variant knobs
  may differ from the checkpoint's (missing parts start fresh, see ``load_checkpoint``).
- ``glamm`` — converted by ``ppcr prepare weights --from glamm`` into a checkpoint first.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ppcr.config.loading import recipe_to_dict
from ppcr.config.schema import Recipe
from ppcr.errors import CheckpointError, PPCRError

if TYPE_CHECKING:  # pragma: no cover
    from ppcr.modeling.model import PPCRModel

VOCAB_MULTIPLE = 64


def _reference(source: str) -> str:
    """A local path made absolute (so a checkpoint can find it from anywhere); hub ids unchanged."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def vocab_rows(tokenizer_size: int) -> int:
    """Embedding rows for a tokenizer of this size, padded to a multiple of 64 (as llava-hf)."""
    return (tokenizer_size + VOCAB_MULTIPLE - 1) // VOCAB_MULTIPLE * VOCAB_MULTIPLE


def build_model(
    recipe: Recipe,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> "PPCRModel":
    """Build the model a recipe describes (see the module docstring for ``init.source``).

    Random initialisation is deterministic: it draws from a generator seeded with
    ``recipe.seed`` (the global RNG state is left as it was).
    """
    source = recipe.init.source
    if source == "glamm":
        raise PPCRError(
            "init.source=glamm is not built directly; convert the GLaMM weights into a PPCR checkpoint first",
            hint="run `ppcr prepare weights --from glamm --out DIR`, then set init.source=checkpoint init.checkpoint=DIR",
        )
    if source not in ("random", "llava", "checkpoint"):
        raise PPCRError(f"unknown init.source {source!r}; valid: random, llava, checkpoint, glamm")
    from ppcr.config.recipe_checks import check_init_spec, check_model_spec

    check_model_spec(recipe.model)  # again: a recipe built in code has not been through load_recipe
    check_init_spec(recipe.init)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        if source == "checkpoint":
            from ppcr.modeling.checkpoint import load_checkpoint

            model = load_checkpoint(recipe.init.checkpoint, spec=recipe.model, dtype=dtype, device=device)
        elif source == "random":
            model = _build_random(recipe)
        else:
            model = _build_from_llava(recipe, dtype, device)
    model.loss_weights = recipe.loss
    model.to(dtype=dtype)
    if device is not None:
        model.to(device)
    model.recipe = recipe_to_dict(recipe)
    model.train()
    return model


def _build_random(recipe: Recipe) -> "PPCRModel":
    from ppcr.modeling.config import BaseWeights
    from ppcr.modeling.llava import (
        add_ppcr_tokens,
        build_llava,
        llava_7b_config,
        load_tokenizer,
        tiny_llava_config,
    )
    from ppcr.modeling.model import PPCRModel
    from ppcr.modeling.sam import build_sam, sam_architecture
    from ppcr.modeling.tokenizer import train_tiny_tokenizer

    spec = recipe.model
    if spec.size == "tiny":
        if recipe.init.tokenizer:
            tokenizer = load_tokenizer(recipe.init.tokenizer)
        else:
            tokenizer = train_tiny_tokenizer(spec.tiny.vocab_size)
        token_ids = add_ppcr_tokens(tokenizer)
        config = tiny_llava_config(spec.tiny, vocab_rows(len(tokenizer)), token_ids)
    else:
        tokenizer = load_tokenizer(recipe.init.tokenizer or recipe.init.llava)
        token_ids = add_ppcr_tokens(tokenizer)
        config = llava_7b_config()
    llava = build_llava(config, spec.attn_implementation)
    if spec.size == "tiny" and spec.tiny.clip_position_init == "sincos":
        from ppcr.modeling.position_init import init_clip_positions_sincos

        init_clip_positions_sincos(llava.model.vision_tower)
    sam = build_sam(sam_architecture(spec.sam, spec.tiny))
    base = BaseWeights(kind="stored", llava=None, sam=None)
    return PPCRModel(spec, llava, sam, token_ids, tokenizer=tokenizer, base=base, loss_weights=recipe.loss)


def _build_from_llava(recipe: Recipe, dtype: torch.dtype, device: str | torch.device | None) -> "PPCRModel":
    from ppcr.modeling.config import BaseWeights
    from ppcr.modeling.llava import add_ppcr_tokens, load_llava, load_tokenizer
    from ppcr.modeling.model import PPCRModel
    from ppcr.modeling.sam import build_sam, load_sam_weights, sam_architecture

    spec, init = recipe.model, recipe.init
    if not init.sam_checkpoint:
        raise CheckpointError(
            "init.source=llava needs init.sam_checkpoint (an official SAM .pth)",
            hint="download sam_vit_h_4b8939.pth (segment-anything README) and set init.sam_checkpoint",
        )
    if not Path(init.sam_checkpoint).expanduser().is_file():  # fail before a long LLaVA download
        raise CheckpointError(
            f"SAM checkpoint not found: {init.sam_checkpoint}",
            hint="download sam_vit_h_4b8939.pth (segment-anything README) and set init.sam_checkpoint",
        )
    tokenizer = load_tokenizer(init.tokenizer or init.llava)
    token_ids = add_ppcr_tokens(tokenizer)
    llava = load_llava(init.llava, dtype=dtype, device=device, attn_implementation=spec.attn_implementation)
    sam = build_sam(sam_architecture(spec.sam, spec.tiny))
    load_sam_weights(sam, init.sam_checkpoint, size=spec.sam)
    base = BaseWeights(kind="reference", llava=_reference(init.llava), sam=_reference(init.sam_checkpoint))
    return PPCRModel(spec, llava, sam, token_ids, tokenizer=tokenizer, base=base, loss_weights=recipe.loss)
