"""What a PPCR checkpoint's ``config.json`` holds, and its conversion to and from JSON.

A checkpoint must be loadable without the recipe that produced it, so ``config.json`` carries the
resolved :class:`~ppcr.config.schema.ModelSpec`, the ids of the special tokens and where the frozen
base weights come from (stored inside the checkpoint for a randomly initialised base, referenced
by hub id / path for a public one). The full recipe is kept too, for provenance only.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ppcr.config.schema import ModelSpec
from ppcr.data import templates
from ppcr.errors import CheckpointError, RecipeError

CONFIG_NAME = "config.json"
FORMAT_NAME = "ppcr-checkpoint"
FORMAT_VERSION = 1
IMAGE_START_TOKEN = templates.IMAGE_START_TOKEN
IMAGE_END_TOKEN = templates.IMAGE_END_TOKEN


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
    """How every prompt is written around its question; fixed by the weights, so stored with them.

    An LLM answers best in the conversation format it was trained on. The defaults are llava-hf's
    LLaVA-1.5 turn (``USER: <image>\\n{question} ASSISTANT: {answer}``), used for llava-hf weights,
    tiny models and every checkpoint written before these fields existed. :data:`GLAMM_PROMPT` is
    the sequence GLaMM was trained and evaluated with: the ``conv_llava_v1`` system prompt, then
    ``The <im_start><image><im_end> provides an overview of the picture.\\n`` before the question.

    ``image_start_end``: wrap the image as ``<im_start><image><im_end>`` (GLaMM's
    ``mm_use_im_start_end``); ``system``: the system prompt, followed by one space (empty: none);
    ``image_text``: the text before the question that carries the single ``<image>`` placeholder.
    """

    image_start_end: bool = False
    system: str = ""
    image_text: str = templates.LLAVA_HF_IMAGE_TEXT

    def __post_init__(self) -> None:
        if not isinstance(self.image_start_end, bool):
            raise TypeError(f"prompt.image_start_end must be true or false, not {self.image_start_end!r}")
        for name in ("system", "image_text"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"prompt.{name} must be a string, not {getattr(self, name)!r}")
        if self.image_text.count(templates.IMAGE_TOKEN) != 1:
            raise TypeError(f"prompt.image_text must contain {templates.IMAGE_TOKEN} once, not {self.image_text!r}")
        # One <image> and no [SEG]/[BOX]/<sem>: the model finds its slots by these tokens.
        texts = {"system": self.system, "image_text": self.image_text.replace(templates.IMAGE_TOKEN, "", 1)}
        for name, text in texts.items():
            reserved = [t for t in templates.RESERVED_TOKENS if t in text]
            if reserved:
                raise TypeError(f"prompt.{name} must not contain the model token {reserved[0]}")

    def conversation(self, question: str, answer: str | None = None, *, image_first: bool = True) -> str:
        """One turn in this format (see :func:`ppcr.data.templates.conversation`)."""
        return templates.conversation(
            question, answer, system=self.system, image_text=self.image_text,
            image_start_end=self.image_start_end, image_first=image_first,
        )


GLAMM_PROMPT = PromptFormat(
    image_start_end=True, system=templates.LLAVA_V1_SYSTEM, image_text=templates.GLAMM_IMAGE_TEXT
)


RELATIVE_PREFIXES = ("./", "../")


def is_checkpoint_relative(value: Optional[str]) -> bool:
    """Whether ``value`` (from config.json) is a path relative to the checkpoint folder."""
    return value is not None and value.startswith(RELATIVE_PREFIXES)


def portable_path(value: Optional[str], root: str | Path) -> Optional[str]:
    """``value`` as config.json of a checkpoint in ``root`` writes it.

    An absolute local path becomes relative to ``root`` (``../weights/sam.pth``; always starting
    with ``./`` or ``../``, so it cannot be read as a hub id), so the checkpoint can be moved or
    shared together with its base; hub ids and paths already relative are kept as they are.
    """
    if value is None or is_checkpoint_relative(value) or not os.path.isabs(value):
        return value
    try:
        relative = Path(os.path.relpath(os.path.realpath(value), os.path.realpath(root))).as_posix()
    except ValueError:  # another drive (Windows): no relative path exists
        return value
    return relative if relative.startswith("../") else f"./{relative}"


@dataclass
class BaseWeights:
    """Where the frozen base (LLaVA + SAM) comes from.

    ``kind="reference"``: ``llava`` is a hub id or a ``save_pretrained`` directory and ``sam`` a
    SAM state dict in segment-anything's key layout (``.pth`` / ``.safetensors``); the checkpoint
    only points at them. ``kind="stored"``: the base lives inside the checkpoint (a randomly
    initialised tiny base, a GLaMM conversion, or ``prepare weights --copy-base``).

    In memory, local paths are absolute; config.json writes them relative to the checkpoint
    folder (:meth:`relative_to`), so a checkpoint moved together with its base still finds it.
    Absolute paths in config.json (checkpoints written before) are read as they are.
    """

    kind: str
    llava: Optional[str]
    sam: Optional[str]

    def resolve(self, value: Optional[str], root: Path) -> Optional[str]:
        """A path of config.json made usable from anywhere (relative ones against the checkpoint ``root``)."""
        if is_checkpoint_relative(value):
            return os.path.realpath(Path(root) / value)
        return value

    def relative_to(self, root: str | Path) -> "BaseWeights":
        """As config.json of a checkpoint in ``root`` stores it (see :func:`portable_path`)."""
        return BaseWeights(self.kind, portable_path(self.llava, root), portable_path(self.sam, root))


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
            raise CheckpointError(f"no {CONFIG_NAME} in {directory}", hint=not_a_checkpoint_hint(directory))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"cannot read {path}: {error}") from None
        return cls.from_dict(data, source=str(path))


def not_a_checkpoint_hint(directory: str | Path) -> str:
    """What to pass instead of ``directory``, which has no ``config.json``: a training run's
    ``final/`` (or, before training ended, its newest saved checkpoint) — the common mistake of
    giving ``--model runs/X`` — else what a checkpoint directory is."""
    from ppcr.training.layout import CHECKPOINTS_DIR, FINAL_DIR

    directory = Path(directory)
    if (directory / FINAL_DIR / CONFIG_NAME).is_file():
        return f"{directory} is a training run; its model is --model {directory / FINAL_DIR}"
    saved = sorted(path.parent for path in (directory / CHECKPOINTS_DIR).glob(f"*/{CONFIG_NAME}"))
    if saved:
        return f"{directory} is a training run with no final model yet; its newest checkpoint is {saved[-1]}"
    return "point at a directory written by PPCRModel.save_pretrained / ppcr train"
