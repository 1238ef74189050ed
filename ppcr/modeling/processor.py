"""Samples (image, expression, optional ground truth) → padded model inputs.

Per expression two LLaVA-1.5 conversations are built (``ppcr.data.templates``): the semantic one
(answer contains ``[SEG]``) and, unless ``spatial_prompt`` is ``none``, the spatial one (answer
contains ``[BOX]``; the question contains ``<sem>`` for the semantic variants). Training samples
a template per sample from ``rng``; evaluation (``rng=None``) uses the fixed templates.

Tokenisation: the whole conversation is tokenised once (``<image>`` is an added token, so the
text before it is always tokenised the same way and every prompt of an image shares the same
prefix ids), the single ``<image>`` id is expanded to the image-token count, BOS is prepended,
EOS appended. Labels are -100 except on the answer tokens and EOS. Sequences are right-padded.
The conversation around the question follows the model's
:class:`~ppcr.modeling.config.PromptFormat` (stored in its checkpoint): llava-hf's turn by default,
GLaMM's system prompt and ``The <im_start><image><im_end> provides an overview of the picture.``
for a model initialised from GLaMM, the sequence its LLM was trained on.
With ``model.prompt_order: question_first`` the question comes before the image in both stages.
Images are read once and prepared for both vision branches (``ClipPreprocess``, ``SamTransform``).
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from ppcr.data import templates
from ppcr.data.preprocess import ClipPreprocess, SamTransform
from ppcr.errors import DataError
from ppcr.images import ImageSource, load_image
from ppcr.modeling.batch import ImageInputs, PPCRBatch, StageInputs, TextInputs
from ppcr.modeling.config import IMAGE_END_TOKEN, IMAGE_START_TOKEN, PromptFormat, TokenIds
from ppcr.modeling.variant import has_spatial_stage

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

    from ppcr.modeling.model import PPCRModel

IGNORE_INDEX = -100


@dataclass
class PPCRSample:
    """One referring expression and its image.

    ``mask``: H×W boolean array of the target (training / evaluation); ``box_xyxy``: the target
    box in pixels of the original image. Samples with the same non-None ``image_key`` share one
    encoded image in the batch (several expressions of one image).
    """

    image: ImageSource
    expression: str
    mask: Optional[np.ndarray] = None
    box_xyxy: Optional[Sequence[float]] = None
    image_key: Optional[Hashable] = None


class PPCRProcessor:
    """Builds :class:`~ppcr.modeling.batch.PPCRBatch` objects for one model configuration."""

    def __init__(
        self,
        tokenizer: "PreTrainedTokenizerBase",
        token_ids: TokenIds,
        *,
        spatial_prompt: str,
        image_seq_length: int,
        clip_size: int,
        sam_size: int,
        clip_pad_to_square: bool = True,
        max_length: int = 512,
        prompt: PromptFormat = PromptFormat(),
        image_first: bool = True,
    ):
        self.tokenizer = tokenizer
        self.image_first = bool(image_first)
        self.token_ids = token_ids
        self.prompt = prompt
        if prompt.image_start_end:
            _require_single_tokens(tokenizer, (IMAGE_START_TOKEN, IMAGE_END_TOKEN))
        self.spatial_prompt = spatial_prompt
        self.image_seq_length = int(image_seq_length)
        self.max_length = int(max_length)
        self.clip = ClipPreprocess(size=clip_size, pad_to_square=clip_pad_to_square)
        self.sam = SamTransform(target_length=sam_size)

    @classmethod
    def from_model(cls, model: "PPCRModel") -> "PPCRProcessor":
        """The processor matching a built model (its tokenizer, sizes, variant and prompt format)."""
        from ppcr.modeling.checkpoint import prompt_format

        if model.tokenizer is None:
            raise DataError("this model has no tokenizer attached; build it with build_model or from_pretrained")
        return cls(
            model.tokenizer,
            model.token_ids,
            spatial_prompt=model.spec.spatial_prompt,
            image_seq_length=model.image_seq_length,
            clip_size=model.clip_image_size,
            sam_size=model.sam_image_size,
            clip_pad_to_square=model.spec.clip_pad_to_square,
            max_length=model.spec.max_length,
            prompt=prompt_format(model),
            image_first=model.spec.prompt_order == "image_first",
        )

    # ------------------------------------------------------------------ text

    def conversation(self, question: str, answer: str | None = None) -> str:
        """The text of one turn in the model's prompt format and prompt order (before tokenisation)."""
        return self.prompt.conversation(question, answer, image_first=self.image_first)

    def _encode_turn(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of one conversation, ``<image>`` expanded, BOS/EOS added."""
        tok = self.tokenizer
        prompt_ids = tok(self.conversation(question), add_special_tokens=False).input_ids
        full_ids = tok(self.conversation(question, answer), add_special_tokens=False).input_ids
        shared = 0
        while shared < min(len(prompt_ids), len(full_ids)) and prompt_ids[shared] == full_ids[shared]:
            shared += 1
        ids = [self.token_ids.bos]
        labels = [IGNORE_INDEX]
        for position, token in enumerate(full_ids):
            if token == self.token_ids.image:
                ids.extend([token] * self.image_seq_length)
                labels.extend([IGNORE_INDEX] * self.image_seq_length)
            else:
                ids.append(token)
                labels.append(token if position >= shared else IGNORE_INDEX)
        ids.append(self.token_ids.eos)
        labels.append(self.token_ids.eos)
        return ids, labels

    def _text_length(self, ids: list[int]) -> int:
        return len(ids) - self.image_seq_length

    def _turn_within_budget(self, build, expression: str) -> tuple[list[int], list[int], str]:
        """Encode ``build(expression)``, dropping trailing words of the expression if too long;
        also returns the expression text that was kept."""
        words = templates.normalise_expression(expression).split()
        while True:
            kept = " ".join(words)
            question, answer = build(kept)
            ids, labels = self._encode_turn(question, answer)
            if self._text_length(ids) <= self.max_length:
                return ids, labels, kept
            if len(words) <= 1:
                raise DataError(
                    f"the prompt for {expression!r} needs {self._text_length(ids)} text tokens, "
                    f"more than model.max_length={self.max_length}",
                    hint="raise model.max_length",
                )
            words = words[:-1]

    def fitted_expression(self, expression: str) -> str:
        """The expression as the evaluation prompts of both stages read it: normalised, with
        trailing words dropped until every prompt fits ``max_length`` (``DataError`` when even
        its first word does not fit)."""
        kept = templates.normalise_expression(expression)
        for build in self._stage_builders(None):
            stage_kept = self._turn_within_budget(build, expression)[2]
            if len(stage_kept) < len(kept):
                kept = stage_kept
        return kept

    def _stage_builders(self, rng: random.Random | None) -> list:
        """(question, answer) builders of each stage this variant runs: semantic, then spatial."""
        builders = [lambda text: templates.semantic_turn(text, rng)]
        if has_spatial_stage(self.spatial_prompt):
            builders.append(lambda text: templates.spatial_turn(self.spatial_prompt, text, rng))
        return builders

    def _pad(self, rows: list[tuple[list[int], list[int]]]) -> StageInputs:
        length = max(len(ids) for ids, _ in rows)
        batch = len(rows)
        input_ids = torch.full((batch, length), self.token_ids.pad, dtype=torch.long)
        attention = torch.zeros((batch, length), dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        for b, (ids, lab) in enumerate(rows):
            input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[b, : len(ids)] = 1
            labels[b, : len(lab)] = torch.tensor(lab, dtype=torch.long)
        return StageInputs(input_ids=input_ids, attention_mask=attention, labels=labels)

    def texts(
        self,
        expressions: Sequence[str],
        image_index: Sequence[int] | torch.Tensor,
        rng: random.Random | None = None,
    ) -> TextInputs:
        """Both stages' prompts for each expression (``rng=None``: the fixed evaluation templates)."""
        if len(expressions) == 0:
            raise DataError("no expressions to process")
        semantic_rows, spatial_rows = [], []
        builders = self._stage_builders(rng)
        for expression in expressions:
            semantic_rows.append(self._turn_within_budget(builders[0], expression)[:2])
            if len(builders) > 1:
                spatial_rows.append(self._turn_within_budget(builders[1], expression)[:2])
        index = torch.as_tensor(list(image_index) if not isinstance(image_index, torch.Tensor) else image_index)
        if index.numel() != len(expressions):
            raise DataError(f"{len(expressions)} expressions but {index.numel()} image indices")
        return TextInputs(
            semantic=self._pad(semantic_rows),
            spatial=self._pad(spatial_rows) if spatial_rows else None,
            image_index=index.to(torch.long),
            expressions=[templates.normalise_expression(e) for e in expressions],
        )

    # ------------------------------------------------------------------ images

    def images(self, images: Sequence[ImageSource]) -> ImageInputs:
        """Read each image once and prepare it for CLIP and for SAM."""
        clip, sam, input_sizes, original_sizes = [], [], [], []
        for source in images:
            rgb = load_image(source)
            clip.append(self.clip(rgb))
            pixels, input_size = self.sam.apply_image(rgb)
            sam.append(pixels)
            input_sizes.append(tuple(int(v) for v in input_size))
            original_sizes.append((rgb.height, rgb.width))
        if not clip:
            raise DataError("no images to process")
        return ImageInputs(
            clip_pixels=torch.stack(clip),
            sam_pixels=torch.stack(sam),
            input_sizes=input_sizes,
            original_sizes=original_sizes,
        )

    # ------------------------------------------------------------------ samples

    def __call__(self, samples: Sequence[PPCRSample], rng: random.Random | None = None) -> PPCRBatch:
        """A full batch: shared images, both stages' prompts, ground-truth masks and boxes."""
        if len(samples) == 0:
            raise DataError("empty batch")
        keys: dict[Hashable, int] = {}
        sources: list[ImageSource] = []
        image_index: list[int] = []
        for sample in samples:
            key = sample.image_key if sample.image_key is not None else ("__sample__", id(sample))
            if key not in keys:
                keys[key] = len(sources)
                sources.append(load_image(sample.image))
            image_index.append(keys[key])
        images = self.images(sources)
        text = self.texts([s.expression for s in samples], image_index, rng)

        gt_masks = None
        if all(s.mask is not None for s in samples):
            gt_masks = []
            for sample, index in zip(samples, image_index):
                mask = np.asarray(sample.mask)
                if mask.shape != images.original_sizes[index]:
                    raise DataError(
                        f"mask of {sample.expression!r} is {mask.shape}, its image is {images.original_sizes[index]}"
                    )
                gt_masks.append(torch.from_numpy((mask > 0).astype(np.float32)))
        gt_boxes = None
        if all(s.box_xyxy is not None for s in samples):
            rows = []
            for sample, index in zip(samples, image_index):
                height, width = images.original_sizes[index]
                x1, y1, x2, y2 = (float(v) for v in sample.box_xyxy)
                rows.append([x1 / width, y1 / height, x2 / width, y2 / height])
            gt_boxes = torch.tensor(rows, dtype=torch.float32).clamp(0.0, 1.0)
        return PPCRBatch(images=images, text=text, gt_masks=gt_masks, gt_boxes=gt_boxes)


def _require_single_tokens(tokenizer: "PreTrainedTokenizerBase", tokens: Sequence[str]) -> None:
    """Each of ``tokens`` must be one token of the vocabulary (not split into pieces)."""
    vocab = tokenizer.get_vocab()
    absent = [token for token in tokens if token not in vocab]
    if absent:
        raise DataError(
            f"the prompt format wraps the image in {' '.join(tokens)}, but the tokenizer has no {absent[0]} token",
            hint="use the tokenizer saved with the checkpoint (ppcr prepare weights --from glamm adds them)",
        )
