"""From a recipe to a :class:`~ppcr.modeling.model.PPCRModel`.

``recipe.init.source`` picks where the weights come from:

- ``random`` — a randomly initialised base (deterministic from ``recipe.seed``). For
  ``model.size=tiny`` this is the CPU model: tiny CLIP/Llama/SAM of the real classes and a
  tokenizer trained on Shapes-Ref text. For ``7b`` the paper architecture with random weights
  and the tokenizer of ``init.tokenizer``/``init.llava``, or ``init.tokenizer: stand-in`` (a
  tokenizer of llava-hf's size and special ids, :func:`~ppcr.modeling.tokenizer.stand_in_llava_tokenizer`)
  where none can be downloaded. The 7B model is constructed directly in ``dtype`` on ``device``
  (``meta`` included): a float32 copy on the CPU first would need 27 GB. ``llm_layers`` keeps
  only the first N decoder layers of the LLM, a real-width model that fits a small machine
  (smoke tests).
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

import contextlib
from collections.abc import Iterator

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
    llm_layers: int | None = None,
) -> "PPCRModel":
    """Build the model a recipe describes (see the module docstring for ``init.source``).

    Random initialisation is deterministic: it draws from a generator seeded with
    ``recipe.seed`` (the global RNG state is left as it was). ``llm_layers`` (``random`` only):
    build the LLM with only its first N decoder layers.
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

    if llm_layers is not None and source != "random":
        raise PPCRError(f"llm_layers cuts a randomly initialised model only, not init.source={source}")

    check_model_spec(recipe.model)  # again: a recipe built in code has not been through load_recipe
    check_init_spec(recipe.init)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        if source == "checkpoint":
            from ppcr.modeling.checkpoint import load_checkpoint
            from ppcr.modeling.model import PPCRModel

            model = load_checkpoint(
                recipe.init.checkpoint, model_class=PPCRModel, spec=recipe.model, dtype=dtype, device=device
            )
        elif source == "random" and recipe.model.size != "tiny":
            with _constructed_as(dtype, device):
                model = _build_random(recipe, llm_layers)
        elif source == "random":
            model = _build_random(recipe, llm_layers)
        else:
            model = _build_from_llava(recipe, dtype, device)
    model.loss_weights = recipe.loss
    model.to(dtype=dtype)
    if device is not None:
        model.to(device)
    model.recipe = recipe_to_dict(recipe)
    model.train()
    return model


@contextlib.contextmanager
def _constructed_as(dtype: torch.dtype, device: str | torch.device | None) -> Iterator[None]:
    """Modules built inside get their parameters in ``dtype`` on ``device`` from the start."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device if device is not None else "cpu"):
            yield
    finally:
        torch.set_default_dtype(saved)


def _random_tokenizer(recipe: Recipe):
    """The tokenizer of a randomly initialised model (see the module docstring)."""
    from ppcr.modeling.llava import load_tokenizer
    from ppcr.modeling.tokenizer import STAND_IN, stand_in_llava_tokenizer, train_tiny_tokenizer

    chosen = recipe.init.tokenizer
    if chosen == STAND_IN:
        return stand_in_llava_tokenizer()
    if recipe.model.size == "tiny":
        return load_tokenizer(chosen) if chosen else train_tiny_tokenizer(recipe.model.tiny.vocab_size)
    return load_tokenizer(chosen or recipe.init.llava)


def _cut_layers(config, llm_layers: int | None) -> None:
    """Keep only the first ``llm_layers`` decoder layers of the text model's configuration."""
    if llm_layers is None:
        return
    text = config.text_config
    if isinstance(llm_layers, bool) or not isinstance(llm_layers, int) or not 1 <= llm_layers <= text.num_hidden_layers:
        raise PPCRError(f"llm_layers must be an integer from 1 to {text.num_hidden_layers}, got {llm_layers!r}")
    text.num_hidden_layers = llm_layers
    if getattr(text, "layer_types", None) is not None:
        text.layer_types = text.layer_types[:llm_layers]


def _build_random(recipe: Recipe, llm_layers: int | None = None) -> "PPCRModel":
    from ppcr.modeling.config import BaseWeights
    from ppcr.modeling.llava import add_ppcr_tokens, build_llava, llava_7b_config, tiny_llava_config
    from ppcr.modeling.model import PPCRModel
    from ppcr.modeling.sam import build_sam, sam_architecture

    spec = recipe.model
    tokenizer = _random_tokenizer(recipe)
    token_ids = add_ppcr_tokens(tokenizer)
    if spec.size == "tiny":
        config = tiny_llava_config(spec.tiny, vocab_rows(len(tokenizer)), token_ids)
    else:
        config = llava_7b_config()
    _cut_layers(config, llm_layers)
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
