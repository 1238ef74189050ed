"""SAM from the ``segment-anything`` package, without torchvision.

``segment_anything/__init__.py`` imports the predictor and the automatic mask generator, which
import torchvision at module level; the ``modeling`` sub-package itself needs only torch. We
therefore register a stub package object with the real ``__path__`` before importing
``segment_anything.modeling``, so Python finds the sub-modules without running the package
``__init__``.

Builders use the official hyper-parameters (``build_sam.py``) for vit_h / vit_l / vit_b and a
tiny size from :class:`~ppcr.config.schema.TinySpec`. Weights are a plain state dict in the
official key layout (``image_encoder.`` / ``prompt_encoder.`` / ``mask_decoder.``; the pixel
mean/std buffers are not persistent), loaded strictly.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ppcr.config.schema import TinySpec
from ppcr.errors import CheckpointError, first_line

if TYPE_CHECKING:  # pragma: no cover
    from segment_anything.modeling import Sam

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


def sam_modeling() -> types.ModuleType:
    """``segment_anything.modeling``, imported without executing the package ``__init__``."""
    loaded = sys.modules.get("segment_anything.modeling")
    if loaded is not None:
        return loaded
    if "segment_anything" not in sys.modules:
        spec = importlib.util.find_spec("segment_anything")
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointError(
                "the segment-anything package is not installed",
                hint="pip install segment-anything (torchvision is not needed)",
            )
        stub = types.ModuleType("segment_anything", "stub: modeling only, see ppcr.modeling.sam")
        stub.__path__ = list(spec.submodule_search_locations)
        stub.__file__ = spec.origin
        # A real spec, so importlib.util.find_spec("segment_anything") keeps working afterwards.
        stub.__spec__ = importlib.machinery.ModuleSpec("segment_anything", None, is_package=True)
        stub.__spec__.submodule_search_locations = list(spec.submodule_search_locations)
        sys.modules["segment_anything"] = stub
    return importlib.import_module("segment_anything.modeling")


@dataclass(frozen=True)
class SamArchitecture:
    """All hyper-parameters of one SAM (the values ``build_sam.py`` hard-codes, made explicit)."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    pixel_mean: tuple[float, float, float] = field(default=SAM_PIXEL_MEAN)
    pixel_std: tuple[float, float, float] = field(default=SAM_PIXEL_STD)

    @property
    def embedding_size(self) -> int:
        return self.image_size // self.patch_size


OFFICIAL_SAM: dict[str, SamArchitecture] = {
    "vit_h": SamArchitecture(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamArchitecture(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamArchitecture(768, 12, 12, (2, 5, 8, 11)),
}


def tiny_sam_architecture(tiny: TinySpec) -> SamArchitecture:
    """A small SAM of the same classes; the last encoder block uses global attention as in SAM."""
    return SamArchitecture(
        encoder_embed_dim=tiny.sam_embed_dim,
        encoder_depth=tiny.sam_depth,
        encoder_num_heads=tiny.sam_heads,
        encoder_global_attn_indexes=(tiny.sam_depth - 1,),
        image_size=tiny.sam_image_size,
        patch_size=tiny.sam_patch_size,
        window_size=tiny.sam_window_size,
        prompt_embed_dim=tiny.sam_prompt_dim,
        decoder_mlp_dim=tiny.sam_decoder_mlp_dim,
        decoder_num_heads=tiny.sam_decoder_heads,
        iou_head_hidden_dim=tiny.sam_prompt_dim,
    )


def sam_architecture(size: str, tiny: TinySpec | None = None) -> SamArchitecture:
    """The architecture of ``model.sam`` (``vit_h``/``vit_l``/``vit_b`` or ``tiny``)."""
    if size == "tiny":
        return tiny_sam_architecture(tiny or TinySpec())
    try:
        return OFFICIAL_SAM[size]
    except KeyError:
        raise CheckpointError(
            f"unknown SAM size {size!r}; valid: {', '.join([*OFFICIAL_SAM, 'tiny'])}"
        ) from None


def build_sam(arch: SamArchitecture) -> "Sam":
    """A randomly initialised ``segment_anything.modeling.Sam`` of the given architecture."""
    modeling = sam_modeling()
    return modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.encoder_num_heads,
            patch_size=arch.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=arch.encoder_global_attn_indexes,
            window_size=arch.window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(arch.embedding_size, arch.embedding_size),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=arch.num_multimask_outputs,
            transformer=modeling.TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=arch.iou_head_depth,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=list(arch.pixel_mean),
        pixel_std=list(arch.pixel_std),
    )


def read_sam_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a SAM state dict from ``.pth`` (``torch.load(weights_only=True)``) or ``.safetensors``."""
    from ppcr.weights.torch_pickle import load_torch_weights

    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"SAM checkpoint not found: {path}",
            hint="download sam_vit_h_4b8939.pth (segment-anything README) and set init.sam_checkpoint",
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = load_torch_weights(path)
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - any reader failure means a corrupt/foreign file
        raise CheckpointError(f"cannot read SAM checkpoint {path}: {first_line(error)}") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(
            f"{path} is not a SAM state dict (expected a flat mapping of parameter names to tensors)"
        )
    return state


def check_state_dict(
    model: torch.nn.Module, state: dict[str, torch.Tensor], what: str, hint: str | None = None
) -> None:
    """Raise a one-line :class:`CheckpointError` unless ``state`` matches ``model`` key for key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) (e.g. {unexpected[0]})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es) (e.g. {mismatched[0]})")
    if problems:
        raise CheckpointError(f"{what} does not match the model: " + "; ".join(problems), hint=hint)


def load_sam_weights(sam: "Sam", path: str | Path, size: str | None = None) -> None:
    """Load an official-layout SAM state dict into ``sam`` strictly (copying into its dtype/device)."""
    state = read_sam_state_dict(path)
    hint = f"model.sam is {size!r}; check that the checkpoint is of that size" if size else None
    check_state_dict(sam, state, f"SAM checkpoint {path}", hint=hint)
    sam.load_state_dict(state, strict=True)


def sam_state_dict(sam: "Sam") -> dict[str, torch.Tensor]:
    """The official-layout state dict (what ``sam_vit_*.pth`` holds), contiguous CPU tensors."""
    return {k: v.detach().to("cpu").contiguous() for k, v in sam.state_dict().items()}
