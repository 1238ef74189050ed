"""The LLaVA-1.5 backbone: ``transformers.LlavaForConditionalGeneration`` built or loaded.

Three ways in, one class out:

- :func:`llava_7b_config` writes llava-hf/llava-1.5-7b-hf's configuration in code (Vicuna-7B text
  model with the 32064-row vocabulary, CLIP ViT-L/14-336 vision tower, 2-layer GELU projector),
  so the paper architecture can be instantiated on the meta device without any download;
- :func:`tiny_llava_config` is the same classes at CPU size (:class:`~ppcr.config.schema.TinySpec`);
- :func:`load_llava` reads a hub id or a ``save_pretrained`` directory, strictly (a missing or
  unexpected weight is a :class:`~ppcr.errors.CheckpointError`, not a warning).

Module layout in transformers 5 (the declared range): ``model.vision_tower``, ``model.multi_modal_projector``,
``model.language_model`` (a ``LlamaModel``) and ``lm_head``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ppcr.config.schema import TinySpec
from ppcr.errors import CheckpointError, first_line
from ppcr.modeling.config import TokenIds

if TYPE_CHECKING:  # pragma: no cover
    from transformers import LlavaConfig, LlavaForConditionalGeneration, PreTrainedTokenizerBase

# llava-hf/llava-1.5-7b-hf's config.json: image_token_index, pad_token_id, vocab_size.
LLAVA_7B_IMAGE_TOKEN_ID = 32000
LLAVA_7B_PAD_TOKEN_ID = 32001
LLAVA_7B_VOCAB = 32064
# Benign keys a loader may report (buffers recomputed at init).
_IGNORED_KEY_PARTS = ("rotary_emb.inv_freq",)


def llava_7b_config() -> "LlavaConfig":
    """The configuration of llava-hf/llava-1.5-7b-hf, written out (no download)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = LlamaConfig(
        vocab_size=LLAVA_7B_VOCAB,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        hidden_act="silu",
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=LLAVA_7B_IMAGE_TOKEN_ID,
        image_seq_length=576,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )


def tiny_llava_config(tiny: TinySpec, vocab_size: int, token_ids: TokenIds) -> "LlavaConfig":
    """A CPU-sized LLaVA of the same classes; ``vocab_size`` rows cover every tokenizer id."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=tiny.llm_hidden,
        intermediate_size=tiny.llm_intermediate,
        num_hidden_layers=tiny.llm_layers,
        num_attention_heads=tiny.llm_heads,
        num_key_value_heads=tiny.llm_heads,
        hidden_act="silu",
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        bos_token_id=token_ids.bos,
        eos_token_id=token_ids.eos,
        pad_token_id=token_ids.pad,
        tie_word_embeddings=False,
        initializer_range=tiny.init_std,
    )
    vision = CLIPVisionConfig(
        hidden_size=tiny.clip_hidden,
        intermediate_size=tiny.clip_intermediate,
        num_hidden_layers=tiny.clip_layers,
        num_attention_heads=tiny.clip_heads,
        image_size=tiny.image_size,
        patch_size=tiny.clip_patch_size,
        projection_dim=tiny.clip_hidden,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        initializer_range=tiny.init_std,
    )
    grid = tiny.image_size // tiny.clip_patch_size
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=token_ids.image,
        image_seq_length=grid * grid,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        # The last layer, not LLaVA's -2: on a 2-layer CLIP, -2 would leave the last layer untrained.
        vision_feature_layer=-1,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
        initializer_range=tiny.init_std,  # LLaVA's own init (LLM, projector) reads this one
    )


def build_llava(config: "LlavaConfig", attn_implementation: str = "sdpa") -> "LlavaForConditionalGeneration":
    """A randomly initialised LLaVA (on the current default device, e.g. ``meta``)."""
    from transformers import LlavaForConditionalGeneration

    config._attn_implementation = attn_implementation
    for sub in (config.text_config, config.vision_config):
        sub._attn_implementation = attn_implementation
    return LlavaForConditionalGeneration(config)


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Silence transformers' per-shard progress bars (restored afterwards); callers report progress."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_llava(
    source: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
) -> "LlavaForConditionalGeneration":
    """Load ``LlavaForConditionalGeneration`` from a hub id or local directory, strictly."""
    from transformers import LlavaForConditionalGeneration

    local = Path(source)
    if (local.exists() or str(source).startswith((".", "/"))) and not (local / "config.json").is_file():
        raise CheckpointError(
            f"LLaVA directory {source} has no config.json",
            hint="point init.llava at a directory written by save_pretrained or at a hub id",
        )
    kwargs = {"dtype": dtype, "attn_implementation": attn_implementation, "output_loading_info": True}
    if device is not None and torch.device(device).type != "cpu":
        kwargs["device_map"] = {"": torch.device(device)}
    try:
        with warnings.catch_warnings(), quiet_progress():
            warnings.simplefilter("ignore", FutureWarning)
            model, info = LlavaForConditionalGeneration.from_pretrained(str(source), **kwargs)
    except (OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"cannot load LLaVA from {source}: {first_line(error)}",
            hint="use a local directory (save_pretrained layout) or download the hub model first",
        ) from None
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = [k for k in info.get(kind) or [] if not any(p in str(k) for p in _IGNORED_KEY_PARTS)]
        if keys:
            problems.append(f"{len(keys)} {kind.replace('_', ' ')} (e.g. {keys[0]})")
    if problems:
        raise CheckpointError(f"LLaVA weights in {source} do not match the model: " + "; ".join(problems))
    return model


def load_tokenizer(source: str | Path) -> "PreTrainedTokenizerBase":
    """A tokenizer from a hub id or a directory (``save_pretrained`` layout)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointError(
            f"cannot load a tokenizer from {source}: {first_line(error)}",
            hint="set init.tokenizer to a local tokenizer directory or a reachable hub id",
        ) from None


def add_ppcr_tokens(tokenizer: "PreTrainedTokenizerBase") -> TokenIds:
    """Add ``[SEG]``, ``[BOX]`` and ``<sem>`` (if absent) and return all ids the model needs.

    The tokens are added as non-normalised, never-split tokens (like GLaMM's ``[SEG]``); adding is
    idempotent, so a tokenizer saved with them keeps its ids. LLaVA-1.5's ``<image>`` must exist.
    """
    from tokenizers import AddedToken

    from ppcr.data.templates import BOX_TOKEN, IMAGE_TOKEN, SEG_TOKEN, SEM_TOKEN

    vocab = tokenizer.get_vocab()
    if IMAGE_TOKEN not in vocab:
        raise CheckpointError(
            f"the tokenizer has no {IMAGE_TOKEN} token; it is not a LLaVA-1.5 tokenizer",
            hint="use the tokenizer of llava-hf/llava-1.5-7b-hf (or of the PPCR checkpoint)",
        )
    missing = [t for t in (SEG_TOKEN, BOX_TOKEN, SEM_TOKEN) if t not in vocab]
    if missing:
        tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in missing])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (IMAGE_TOKEN, SEG_TOKEN, BOX_TOKEN, SEM_TOKEN)}
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.eos_token_id
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise CheckpointError("the tokenizer has no BOS/EOS token; it is not a Llama tokenizer")
    return TokenIds(
        image=ids[IMAGE_TOKEN],
        pad=int(pad),
        bos=int(tokenizer.bos_token_id),
        eos=int(tokenizer.eos_token_id),
        seg=ids[SEG_TOKEN],
        box=ids[BOX_TOKEN],
        sem=ids[SEM_TOKEN],
    )


def image_seq_length(config: "LlavaConfig") -> int:
    """How many ``<image>`` tokens one image becomes (576 for CLIP-336/14, strategy "default")."""
    vision = config.vision_config
    grid = vision.image_size // vision.patch_size
    extra = 1 if config.vision_feature_select_strategy == "full" else 0
    return grid * grid + extra


def ensure_vocab_rows(llava: "LlavaForConditionalGeneration", token_ids: TokenIds) -> None:
    """Grow the embedding / lm_head (never shrink) so every PPCR token id has a row.

    llava-1.5-7b-hf already has 32064 rows (padded for tensor cores), so ids 32002.. fit and
    nothing changes; a plain ``resize_token_embeddings(len(tokenizer))`` would shrink it.
    """
    needed = max(token_ids.added) + 1
    rows = llava.get_input_embeddings().weight.shape[0]
    if needed > rows:
        llava.resize_token_embeddings(needed, pad_to_multiple_of=64, mean_resizing=True)
