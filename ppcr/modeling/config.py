"""What a PPCR checkpoint's ``config.json`` holds, and its conversion to and from JSON.

A checkpoint must be loadable without the recipe that produced it, so ``config.json`` carries the
resolved :class:`~ppcr.config.schema.ModelSpec`, the ids of the special tokens and where the frozen
base weights come from (stored inside the checkpoint for a randomly initialised base, referenced
by hub id / path for a public one). The full recipe is kept too, for provenance only.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ppcr.config.schema import ModelSpec
from ppcr.errors import CheckpointError, RecipeError

CONFIG_NAME = "config.json"
FORMAT_NAME = "ppcr-checkpoint"
FORMAT_VERSION = 1
IMAGE_START_TOKEN = "<im_start>"
IMAGE_END_TOKEN = "<im_end>"


@dataclass(frozen=True)
class TokenIds:
    """Ids of the tokens the model treats specially (one tokenizer, one set of ids)."""

    image: int
    pad: int
    bos: int
    eos: int
    seg: int
    box: int
    sem: int

    @property
    def added(self) -> tuple[int, int, int]:
        """The PPCR tokens whose embedding / output rows are trained: ``[SEG]``, ``[BOX]``, ``<sem>``."""
        return (self.seg, self.box, self.sem)


@dataclass(frozen=True)
class PromptFormat:
    """How prompts write the image placeholder; fixed by the weights, so stored with them.

    ``image_start_end``: wrap it as ``<im_start><image><im_end>``, the sequence GLaMM's LLM was
    trained on (its ``mm_use_im_start_end``), for models initialised
    from GLaMM; False (llava-hf, the default): a bare ``<image>``.
    """

    image_start_end: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.image_start_end, bool):
            raise TypeError(f"prompt.image_start_end must be true or false, not {self.image_start_end!r}")


@dataclass
class BaseWeights:
    """Where the frozen base (LLaVA + SAM) comes from.

    ``kind="reference"``: ``llava`` is a hub id or a ``save_pretrained`` directory and ``sam`` a
    SAM state dict in segment-anything's key layout (``.pth`` / ``.safetensors``); the checkpoint
    only points at them. ``kind="stored"``: the base was randomly initialised (tiny model) and
    lives inside the checkpoint; its paths start with ``./`` (relative to the checkpoint).
    """

    kind: str
    llava: Optional[str]
    sam: Optional[str]

    def resolve(self, value: Optional[str], root: Path) -> Optional[str]:
        """A stored path made absolute against the checkpoint directory ``root``."""
        if value is not None and value.startswith("./"):
            return str(Path(root) / value[2:])
        return value


@dataclass
class PPCRConfig:
    """Everything needed to rebuild a :class:`~ppcr.modeling.model.PPCRModel` from a directory."""

    model: ModelSpec
    base: BaseWeights
    token_ids: TokenIds
    recipe: Optional[dict[str, Any]] = None
    prompt: PromptFormat = field(default_factory=PromptFormat)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "format_version": self.format_version,
            "model": dataclasses.asdict(self.model),
            "base": dataclasses.asdict(self.base),
            "token_ids": dataclasses.asdict(self.token_ids),
            "prompt": dataclasses.asdict(self.prompt),
            "recipe": self.recipe,
            "extra": self.extra,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = CONFIG_NAME) -> "PPCRConfig":
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise CheckpointError(
                f"{source} is not a PPCR checkpoint config (missing \"format\": \"{FORMAT_NAME}\")",
                hint="point at a directory written by PPCRModel.save_pretrained / ppcr train",
            )
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{source} has format_version {version!r}; this PPCR reads version {FORMAT_VERSION}",
                hint="re-export the checkpoint with a matching PPCR version",
            )
        try:
            from ppcr.config.loading import recipe_from_dict

            model = recipe_from_dict({"model": data["model"]}).model
            base = BaseWeights(**data["base"])
            token_ids = TokenIds(**data["token_ids"])
            prompt = PromptFormat(**(data.get("prompt") or {}))  # absent in older checkpoints
        except (KeyError, TypeError) as error:
            raise CheckpointError(f"{source} is incomplete or malformed: {error}") from None
        except RecipeError as error:
            raise CheckpointError(f"{source}: invalid model spec: {error.message}") from None
        recipe = data.get("recipe")
        return cls(
            model=model, base=base, token_ids=token_ids, recipe=recipe, prompt=prompt, extra=data.get("extra") or {}
        )

    @classmethod
    def load(cls, directory: str | Path) -> "PPCRConfig":
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise CheckpointError(
                f"no {CONFIG_NAME} in {directory}",
                hint="point at a directory written by PPCRModel.save_pretrained / ppcr train",
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"cannot read {path}: {error}") from None
        return cls.from_dict(data, source=str(path))
