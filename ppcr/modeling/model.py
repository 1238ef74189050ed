"""PPCRModel: Semantic Understanding → Spatial Grounding → Instance Segmentation (docs/design.md, "Pipeline").

Stage 1 (adapter ``semantic``) reads the semantic conversation; h_sem is the last-layer hidden
state at the position *before* ``[SEG]`` (the state that predicts it, as GLaMM/LISA). SAM's
semantic prompt is ``semantic_proj(h_sem)``.

Stage 2 (adapter ``spatial``) reads the spatial conversation, whose ``<sem>`` input embedding is
replaced by ``sem_to_input(h_sem)`` (variants ``semantic`` and ``expression+semantic``; the
``expression`` variant has no ``<sem>``; ``none`` has no stage 2). P_box is the hidden state
before ``[BOX]``; the box head maps it to a normalised xyxy box of the original image.
With ``model.head_norm: batch`` h_sem and P_box are standardised per feature before the heads.

Stage 3: SAM's frozen image encoder, its frozen prompt encoder fed the box (two corner tokens,
corners ordered and scaled into SAM's resized frame) followed by the semantic prompt as one
extra sparse token, and the trainable mask decoder (single-mask output). Logits are brought
back to the original H×W; the mask is ``logits > 0``.

Images and texts are separate inputs so that an image is encoded once and prompted many times:
:meth:`PPCRModel.encode_images` → :class:`ImageFeatures`; :meth:`PPCRModel.segment` runs any
number of expressions against them (batched, optionally sharing each image's prompt prefix through
the KV cache). ``model(batch)`` is the training forward with the weighted loss (docs/design.md, "Objective").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from ppcr.config.schema import BoxSource, LossSpec, ModelSpec, choices
from ppcr.data.preprocess import SamTransform
from ppcr.errors import PPCRError
from ppcr.modeling import losses as L
from ppcr.modeling.adapters import SEMANTIC, SPATIAL, AdapterSet
from ppcr.modeling.batch import ImageInputs, PPCRBatch, StageInputs, TextInputs
from ppcr.modeling.config import BaseWeights, PromptFormat, TokenIds
from ppcr.modeling.heads import AttnBoxHead, BoxMLP, PointerBoxHead, SemanticProjection, StateStandardiser
from ppcr.modeling.kv_cache import cache_keyword, returned_cache
from ppcr.modeling.llava import ensure_vocab_rows, image_seq_length
from ppcr.modeling.patch_grid import PatchGrid
from ppcr.modeling.token_rows import AddedTokenRows

if TYPE_CHECKING:  # pragma: no cover
    from segment_anything.modeling import Sam
    from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerBase

    from ppcr.modeling.model_card import MetricsArgument


@dataclass
class ImageFeatures:
    """Per-image encodings, computed once: CLIP tokens after the projector (N×n×d, the LLM's
    ``<image>`` embeddings) and SAM image embeddings (N×C×h×w), plus the sizes SAM needs."""

    clip_tokens: torch.Tensor
    sam_embeddings: torch.Tensor
    input_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.original_sizes)


@dataclass
class PPCRPrediction:
    """What the three stages produce for B expressions.

    ``mask_logits``: one float32 H×W tensor per sample (its image's original size);
    ``boxes``: B×4 normalised xyxy from the box head (None for ``spatial_prompt=none``);
    ``sam_boxes``: B×4 boxes actually given to SAM, in its resized-input frame (None if no box);
    ``patch_logits``: B×P scores over CLIP's patches (``spatial_head: pointer`` only);
    ``h_sem``/``p_box``: the LLM hidden states (P_txt^seg, P_box^seg); ``semantic_prompt``: the
    SAM token made from h_sem; ``iou_predictions``: SAM's own quality head for the mask (its
    pretrained estimate; not trained by PPCR's losses); ``scores``: the confidence we report, the
    mean foreground probability inside the predicted mask (0 for an empty mask).
    """

    mask_logits: list[torch.Tensor]
    boxes: Optional[torch.Tensor]
    sam_boxes: Optional[torch.Tensor]
    h_sem: torch.Tensor
    p_box: Optional[torch.Tensor]
    semantic_prompt: torch.Tensor
    iou_predictions: torch.Tensor
    scores: torch.Tensor
    ce_sum: Optional[torch.Tensor] = None
    ce_count: int = 0
    patch_logits: Optional[torch.Tensor] = None

    @property
    def masks(self) -> list[torch.Tensor]:
        return [logits > 0 for logits in self.mask_logits]


@dataclass
class PPCROutput:
    """Training forward result: the weighted loss, its unweighted terms, metrics that are not
    optimised (``patch_acc``: top-1 patch accuracy of the pointer head) and the predictions."""

    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    mask_logits: list[torch.Tensor]
    boxes: Optional[torch.Tensor]
    h_sem: torch.Tensor
    p_box: Optional[torch.Tensor]
    prediction: PPCRPrediction = field(repr=False)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def _positions_before(input_ids: torch.Tensor, token_id: int, what: str) -> torch.Tensor:
    """Index of the position preceding the single occurrence of ``token_id`` in each row."""
    hits = input_ids == token_id
    counts = hits.sum(dim=1)
    if not bool((counts == 1).all()):
        raise PPCRError(f"every prompt must contain exactly one {what} token; counts: {counts.tolist()}")
    return hits.to(torch.long).argmax(dim=1) - 1


class PPCRModel(nn.Module):
    """LLaVA-1.5 with two LoRA adapters, the PPCR heads and SAM (see the module docstring).

    Build it with :func:`ppcr.modeling.build.build_model` (from a recipe) or
    :meth:`from_pretrained` (from a checkpoint directory); the constructor takes already built
    parts. ``tokenizer`` and ``base`` are carried along for the processor and for saving.
    """

    def __init__(
        self,
        spec: ModelSpec,
        llava: "LlavaForConditionalGeneration",
        sam: "Sam",
        token_ids: TokenIds,
        *,
        tokenizer: Optional["PreTrainedTokenizerBase"] = None,
        base: Optional[BaseWeights] = None,
        loss_weights: Optional[LossSpec] = None,
    ):
        super().__init__()
        self.spec = spec
        self.token_ids = token_ids
        self.tokenizer = tokenizer
        self.base = base
        self.loss_weights = loss_weights or LossSpec()
        self.recipe: Optional[dict] = None  # the recipe it was built from (plain dict), saved with it
        self.source_dir: Optional[Path] = None  # the checkpoint folder it was loaded from, if any
        # How prompts write the image placeholder; fixed by the weights (GLaMM-initialised models
        # wrap it in <im_start>/<im_end>), saved in config.json.
        self.prompt_format = PromptFormat()

        ensure_vocab_rows(llava, token_ids)
        names = (SEMANTIC,) if spec.spatial_prompt == "none" else (SEMANTIC, SPATIAL)
        base_name = base.llava if base is not None else None
        self.adapters = AdapterSet.attach(llava, spec.lora, names, base_name)
        self.llm = self.adapters.peft_model
        self.sam = sam

        hidden = self.hidden_size
        sam_dim = sam.prompt_encoder.embed_dim
        self.token_rows = AddedTokenRows.from_base(
            token_ids.added, self.llava.get_input_embeddings(), self.llava.get_output_embeddings()
        )
        self.semantic_proj = SemanticProjection(hidden, sam_dim)
        uses_sem_slot = spec.spatial_prompt in ("semantic", "expression+semantic")
        self.sem_to_input = nn.Linear(hidden, hidden) if uses_sem_slot else None
        self.box_head: Optional[nn.Module] = None
        self.patch_grid: Optional[PatchGrid] = None
        if spec.spatial_prompt != "none":
            if spec.spatial_head == "attn":
                head = spec.attn_head
                dim = spec.tiny.attn_head_dim if spec.size == "tiny" else head.dim
                self.box_head = AttnBoxHead(hidden, self.image_seq_length, dim, head.layers, head.heads, head.mlp_ratio)
            elif spec.spatial_head == "pointer":
                self.patch_grid = self.clip_patch_grid()
                dim = spec.tiny.pointer_head_dim if spec.size == "tiny" else spec.pointer_head.dim
                self.box_head = PointerBoxHead(hidden, dim)
            else:
                self.box_head = BoxMLP(hidden)
        standardise = spec.head_norm == "batch"
        self.h_sem_norm = StateStandardiser(hidden) if standardise else None
        self.p_box_norm = StateStandardiser(hidden) if standardise and self.box_head is not None else None
        self.sam_transform = SamTransform(target_length=self.sam_image_size)
        self._set_trainable()

    # ------------------------------------------------------------------ structure

    @property
    def llava(self) -> "LlavaForConditionalGeneration":
        """The (LoRA-injected) ``LlavaForConditionalGeneration``."""
        return self.llm.base_model.model

    @property
    def language_model(self) -> nn.Module:
        return self.llava.model.language_model

    @property
    def hidden_size(self) -> int:
        return int(self.llava.config.text_config.hidden_size)

    @property
    def image_seq_length(self) -> int:
        return image_seq_length(self.llava.config)

    @property
    def clip_image_size(self) -> int:
        return int(self.llava.config.vision_config.image_size)

    @property
    def sam_image_size(self) -> int:
        return int(self.sam.image_encoder.img_size)

    def clip_patch_grid(self) -> PatchGrid:
        """CLIP's patch grid, one image token per patch (what the pointer head points at)."""
        vision = self.llava.config.vision_config
        grid = int(vision.image_size) // int(vision.patch_size)
        if grid * grid != self.image_seq_length:
            raise PPCRError(
                f"spatial_head=pointer needs one image token per CLIP patch ({grid}x{grid}), "
                f"but the model has {self.image_seq_length} image tokens",
                hint="use vision_feature_select_strategy 'default' (LLaVA-1.5's)",
            )
        return PatchGrid(grid, self.clip_image_size, self.spec.clip_pad_to_square)

    def trainable_module_paths(self) -> dict[str, str]:
        """Name → attribute path of the fully trainable modules besides the LoRA adapters.

        These are what ``heads.safetensors`` holds (keys ``<name>.<parameter>``).
        """
        paths = {"token_rows": "token_rows", "semantic_proj": "semantic_proj", "mask_decoder": "sam.mask_decoder"}
        if self.sem_to_input is not None:
            paths["sem_to_input"] = "sem_to_input"
        if self.box_head is not None:
            paths["box_head"] = "box_head"
        for name in ("h_sem_norm", "p_box_norm"):
            if getattr(self, name) is not None:
                paths[name] = name
        return paths

    def trainable_modules(self) -> dict[str, nn.Module]:
        """The modules of :meth:`trainable_module_paths`, by name."""
        return {name: self.get_submodule(path) for name, path in self.trainable_module_paths().items()}

    def _apply(self, fn, recurse=True):
        """Casts keep SAM's random-Fourier matrix in float32.

        segment-anything computes prompt coordinates in float32 and multiplies them with that
        buffer, so ``model.to(torch.bfloat16)`` (or DeepSpeed's cast) would otherwise break box
        prompts, and low precision there would blur box corners by several pixels.
        """
        result = super()._apply(fn, recurse)
        layer = self.sam.prompt_encoder.pe_layer
        matrix = layer.positional_encoding_gaussian_matrix
        if matrix.is_floating_point() and matrix.dtype != torch.float32:
            layer.positional_encoding_gaussian_matrix = matrix.float()
        return result

    def _set_trainable(self) -> None:
        """Freeze everything, then unfreeze the adapters and the PPCR-trained modules
        (docs/design.md, "Trainable and frozen parts")."""
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        for parameter in self.adapters.all_parameters():
            parameter.requires_grad_(True)
        for module in self.trainable_modules().values():
            for parameter in module.parameters():
                parameter.requires_grad_(True)
        for name in self.spec.unfreeze:
            for module in self.base_component(name):
                for parameter in module.parameters():
                    parameter.requires_grad_(True)
        for module in self.unreached_modules():
            for parameter in module.parameters():
                parameter.requires_grad_(False)

    def unreached_modules(self) -> list[nn.Module]:
        """Parts of the trained modules that no PPCR forward reaches, kept frozen so the optimizer
        carries no dead weights: LLaVA reads CLIP's hidden states, never its pooled output
        (``post_layernorm``); SAM is prompted with a box (or nothing) and the semantic token, never
        with points or a mask; its IoU estimate is not in the objective; single-mask output reads
        only the first mask token's hypernetwork."""
        tower = self.llava.model.vision_tower
        vision = getattr(tower, "vision_model", tower)
        prompt, decoder = self.sam.prompt_encoder, self.sam.mask_decoder
        unreached = [prompt.point_embeddings[0], prompt.point_embeddings[1], prompt.not_a_point_embed]
        unreached += [prompt.mask_downscaling, decoder.iou_prediction_head, *decoder.output_hypernetworks_mlps[1:]]
        if self.box_head is None:  # spatial_prompt=none: no box corners either
            unreached += [prompt.point_embeddings[2], prompt.point_embeddings[3]]
        if getattr(vision, "post_layernorm", None) is not None:
            unreached.append(vision.post_layernorm)
        return unreached

    def base_component(self, name: str) -> list[nn.Module]:
        """The modules behind a ``model.unfreeze`` name (see ``ModelSpec.unfreeze``)."""
        llava = self.llava
        components = {
            "language_model": lambda: [self.language_model],
            "vision_tower": lambda: [llava.model.vision_tower],
            "projector": lambda: [llava.model.multi_modal_projector],
            "embeddings": lambda: [llava.get_input_embeddings(), llava.get_output_embeddings()],
            "sam_image_encoder": lambda: [self.sam.image_encoder],
            "sam_prompt_encoder": lambda: [self.sam.prompt_encoder],
        }
        if name not in components:
            raise PPCRError(f"unknown base component {name!r}; valid: {', '.join(components)}")
        return components[name]()

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of everything the optimizer should update."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the LLM layers' activations in backward (saves memory on the 7B model).

        Adapter routing is global state, and the backward pass recomputes a stage-2 layer after
        the forward has switched back to the ``semantic`` adapter; a plain checkpoint would
        silently recompute it through the wrong adapter. Each checkpointed call therefore records
        the adapter active at forward time and re-activates it for its recomputation.
        """
        self.language_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        adapters = self.adapters

        def adapter_aware(checkpoint_func):
            def run(function, *args, **kwargs):
                name = adapters.active

                def routed(*a, **k):
                    if adapters.active == name:
                        return function(*a, **k)
                    with adapters.use(name):
                        return function(*a, **k)

                return checkpoint_func(routed, *args, **kwargs)

            run.ppcr_adapter_aware = True
            return run

        for module in self.language_model.modules():
            func = getattr(module, "_gradient_checkpointing_func", None)
            if getattr(module, "gradient_checkpointing", False) and func is not None:
                if not getattr(func, "ppcr_adapter_aware", False):
                    module._gradient_checkpointing_func = adapter_aware(func)

    # ------------------------------------------------------------------ encoders

    @torch.no_grad()
    def encode_images(self, images: ImageInputs) -> ImageFeatures:
        """CLIP tokens (through the projector) and SAM image embeddings, once per image (inference)."""
        return self._encode_images(images)

    def _encode_images(self, images: ImageInputs) -> ImageFeatures:
        """:meth:`encode_images` with autograd left as the caller has it (the training forward).

        Frozen encoders build no graph (none of their parameters requires grad); encoders that
        ``model.unfreeze`` names (the randomly initialised tiny model) must receive gradients, so
        this path must not run under ``no_grad``.
        """
        vision_dtype = next(self.llava.model.vision_tower.parameters()).dtype
        out = self.llava.model.get_image_features(pixel_values=images.clip_pixels.to(vision_dtype))
        pooled = out.pooler_output
        clip_tokens = torch.stack(list(pooled)) if isinstance(pooled, (list, tuple)) else pooled
        sam_dtype = self.sam.image_encoder.patch_embed.proj.weight.dtype
        sam_embeddings = self.sam.image_encoder(images.sam_pixels.to(sam_dtype))
        return ImageFeatures(
            clip_tokens=clip_tokens,
            sam_embeddings=sam_embeddings,
            input_sizes=[tuple(s) for s in images.input_sizes],
            original_sizes=[tuple(s) for s in images.original_sizes],
        )

    # ------------------------------------------------------------------ LLM stages

    def _input_embeddings(
        self,
        input_ids: torch.Tensor,
        image_tokens: Optional[torch.Tensor],
        sem_input: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """Token embeddings with the image tokens scattered in and ``<sem>`` replaced."""
        embeds = self.token_rows.embed(input_ids, self.llava.get_input_embeddings())
        if image_tokens is not None:
            image_slots = input_ids == self.token_ids.image
            expected = image_tokens.shape[0] * image_tokens.shape[1]
            if int(image_slots.sum()) != expected:
                raise PPCRError(
                    f"prompts hold {int(image_slots.sum())} image tokens, the images give {expected}",
                    hint="build inputs with PPCRProcessor.from_model(model)",
                )
            embeds = embeds.masked_scatter(image_slots.unsqueeze(-1), image_tokens.to(embeds.dtype))
        if sem_input is not None:
            sem_slots = input_ids == self.token_ids.sem
            if not bool((sem_slots.sum(dim=1) == 1).all()):
                raise PPCRError("every spatial prompt of this variant must contain <sem> exactly once")
            embeds = torch.where(sem_slots.unsqueeze(-1), sem_input.to(embeds.dtype).unsqueeze(1), embeds)
        return embeds

    def input_embeddings(
        self,
        input_ids: torch.Tensor,
        image_tokens: Optional[torch.Tensor],
        sem_input: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """One stage's LLM input embeddings (B×T×d), built as its forward builds them: the token
        embeddings (PPCR's added tokens from their trained rows), the ``<image>`` slots filled
        with ``image_tokens`` (B×n×d, each row's image) and the ``<sem>`` slot with ``sem_input``
        (B×d) when given. For analyses that run ``language_model`` themselves (attention maps,
        the probes in experiments/)."""
        return self._input_embeddings(input_ids, image_tokens, sem_input)

    def _language_model(self, embeds: torch.Tensor, attention_mask: torch.Tensor, **kwargs):
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)

    def _stage_hidden(
        self,
        adapter: str,
        stage: StageInputs,
        clip_tokens: torch.Tensor,
        image_index: torch.Tensor,
        sem_input: Optional[torch.Tensor],
        share_prefix: bool,
    ) -> torch.Tensor:
        """Last-layer hidden states (B×T×d) of one stage, through the given adapter."""
        with self.adapters.use(adapter):
            if share_prefix:
                shared = self._shared_prefix_hidden(stage, clip_tokens, image_index, sem_input)
                if shared is not None:
                    return shared
            # index_select, not clip_tokens[image_index]: with an image repeated in the batch the
            # indexing backward accumulated in a varying order on CPU, so reruns drifted apart.
            embeds = self._input_embeddings(stage.input_ids, clip_tokens.index_select(0, image_index), sem_input)
            out = self._language_model(embeds, stage.attention_mask, use_cache=False)
            return out.last_hidden_state

    def _prefix_length(self, input_ids: torch.Tensor) -> Optional[int]:
        """Length of the prefix every row shares up to and including the image tokens, if any.

        With the question before the image (``prompt_order: question_first``) rows share at most
        their template, so there is usually no such prefix and every row runs whole."""
        image_slots = (input_ids == self.token_ids.image).to(torch.long)
        if int(image_slots.sum()) == 0:
            return None
        last = input_ids.shape[1] - 1 - image_slots.flip(1).argmax(dim=1)
        if not bool((last == last[0]).all()):
            return None
        length = int(last[0]) + 1
        if not bool((input_ids[:, :length] == input_ids[:1, :length]).all()):
            return None
        if bool((input_ids[:, :length] == self.token_ids.sem).any()):
            return None  # <sem> carries each row's own h_sem: equal ids, different inputs
        return length

    def _shared_prefix_hidden(
        self,
        stage: StageInputs,
        clip_tokens: torch.Tensor,
        image_index: torch.Tensor,
        sem_input: Optional[torch.Tensor],
    ) -> Optional[torch.Tensor]:
        """Hidden states computed with one KV-cached prefix per image (docs/design.md, "Evaluation").

        The conversation prefix (BOS, ``USER:``, the image tokens) is identical for every
        expression of an image, so it is run once per image and its cache is repeated for that
        image's expressions; only the suffixes are batched. Mathematically the same as the plain
        forward (right padding never affects earlier positions under causal attention).
        """
        prefix = self._prefix_length(stage.input_ids)
        if prefix is None or prefix >= stage.input_ids.shape[1]:
            return None
        batch, length = stage.input_ids.shape
        hidden = None
        for image in torch.unique(image_index).tolist():
            rows = (image_index == image).nonzero(as_tuple=True)[0]
            prefix_ids = stage.input_ids[rows[:1], :prefix]
            prefix_embeds = self._input_embeddings(prefix_ids, clip_tokens[image : image + 1], None)
            prefix_mask = torch.ones_like(prefix_ids)
            prefix_out = self._language_model(prefix_embeds, prefix_mask, use_cache=True)
            cache = returned_cache(prefix_out)
            if rows.numel() > 1:
                cache.batch_repeat_interleave(rows.numel())
            suffix_ids = stage.input_ids[rows, prefix:]
            suffix_embeds = self._input_embeddings(
                suffix_ids, None, None if sem_input is None else sem_input[rows]
            )
            mask = torch.cat(
                [torch.ones((rows.numel(), prefix), dtype=stage.attention_mask.dtype, device=suffix_ids.device),
                 stage.attention_mask[rows, prefix:]],
                dim=1,
            )
            cached = {cache_keyword(type(self.language_model)): cache}
            suffix_out = self._language_model(suffix_embeds, mask, use_cache=True, **cached)
            rows_hidden = torch.cat(
                [prefix_out.last_hidden_state.expand(rows.numel(), -1, -1), suffix_out.last_hidden_state], dim=1
            )
            if hidden is None:
                hidden = rows_hidden.new_zeros((batch, length, rows_hidden.shape[-1]))
            hidden[rows] = rows_hidden
        return hidden

    def semantic_prompts(self, h_sem: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """From h_sem: SAM's semantic prompt token and the spatial stage's ``<sem>`` input (None when
        the variant has no ``<sem>`` slot); one place for the step that probes also need."""
        head_sem = self.h_sem_norm(h_sem) if self.h_sem_norm is not None else h_sem
        sem_input = self.sem_to_input(head_sem) if self.sem_to_input is not None else None
        return self.semantic_proj(head_sem), sem_input

    def _answer_ce(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Summed next-token CE over the labelled (answer) positions and their count."""
        targets = labels[:, 1:]
        selected = targets != -100
        count = int(selected.sum())
        if count == 0:
            return hidden.new_zeros((), dtype=torch.float32), 0
        states = hidden[:, :-1][selected]
        logits = self.token_rows.logits(states, self.llava.get_output_embeddings())
        loss = nn.functional.cross_entropy(logits.float(), targets[selected], reduction="sum")
        return loss, count

    # ------------------------------------------------------------------ SAM

    def _sam_masks(
        self,
        features: ImageFeatures,
        image_index: torch.Tensor,
        semantic_prompt: torch.Tensor,
        boxes: Optional[torch.Tensor],
    ) -> tuple[list[torch.Tensor], torch.Tensor, Optional[torch.Tensor]]:
        """Per image: prompt encoder (box corners + semantic token) → mask decoder → original size."""
        prompt_encoder, decoder = self.sam.prompt_encoder, self.sam.mask_decoder
        batch = image_index.shape[0]
        logits: list[Optional[torch.Tensor]] = [None] * batch
        iou = semantic_prompt.new_zeros((batch,), dtype=torch.float32)
        sam_boxes = None if boxes is None else boxes.new_zeros(boxes.shape, dtype=torch.float32)
        embed_dtype = features.sam_embeddings.dtype
        pe_dtype = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.dtype
        for image in torch.unique(image_index).tolist():
            rows = (image_index == image).nonzero(as_tuple=True)[0]
            input_size = features.input_sizes[image]
            semantic = semantic_prompt[rows].unsqueeze(1).to(embed_dtype)
            if boxes is not None:
                frame = self.sam_transform.boxes_from_normalized(boxes[rows].float(), input_size)
                sam_boxes[rows] = frame
                sparse, dense = prompt_encoder(points=None, boxes=frame.to(pe_dtype), masks=None)
                sparse = torch.cat([sparse.to(embed_dtype), semantic], dim=1)
            else:
                sparse = semantic
                h, w = prompt_encoder.image_embedding_size
                dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(rows.numel(), -1, h, w)
            low_res, quality = decoder(
                image_embeddings=features.sam_embeddings[image : image + 1],
                image_pe=prompt_encoder.get_dense_pe().to(embed_dtype),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense.to(embed_dtype),
                multimask_output=False,
            )
            full = self.sam_transform.postprocess_masks(low_res, input_size, features.original_sizes[image])
            for k, row in enumerate(rows.tolist()):
                logits[row] = full[k, 0]
            iou[rows] = quality[:, 0].float()
        return logits, iou, sam_boxes  # type: ignore[return-value]

    # ------------------------------------------------------------------ the pipeline

    def _predict(
        self,
        features: ImageFeatures,
        text: TextInputs,
        *,
        box_source: BoxSource,
        gt_boxes: Optional[torch.Tensor],
        share_prefix: bool,
        compute_ce: bool,
        gt_box_rows: Optional[torch.Tensor] = None,
        teacher_boxes: Optional[torch.Tensor] = None,
    ) -> PPCRPrediction:
        image_index = text.image_index.to(features.clip_tokens.device)
        if int(image_index.max()) >= len(features) or int(image_index.min()) < 0:
            raise PPCRError(f"image_index out of range for {len(features)} encoded image(s)")
        if box_source not in choices(BoxSource):
            raise PPCRError(f"unknown box_source {box_source!r}; valid: {', '.join(choices(BoxSource))}")
        if box_source == "gt" and gt_boxes is None:
            raise PPCRError("box_source='gt' needs ground-truth boxes", hint="pass gt_boxes (B×4 normalised xyxy)")

        # Stage 1: semantic understanding.
        semantic = text.semantic
        hidden = self._stage_hidden(SEMANTIC, semantic, features.clip_tokens, image_index, None, share_prefix)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        h_sem = hidden[rows, _positions_before(semantic.input_ids, self.token_ids.seg, "[SEG]")]
        ce_sum, ce_count = self._answer_ce(hidden, semantic.labels) if compute_ce else (None, 0)
        semantic_prompt, sem_input = self.semantic_prompts(h_sem)

        # Stage 2: spatial grounding.
        boxes = p_box = patch_logits = None
        if self.box_head is not None:
            if text.spatial is None:
                raise PPCRError(f"spatial_prompt={self.spec.spatial_prompt!r} needs spatial prompts")
            spatial = text.spatial
            hidden2 = self._stage_hidden(SPATIAL, spatial, features.clip_tokens, image_index, sem_input, share_prefix)
            p_box = hidden2[rows, _positions_before(spatial.input_ids, self.token_ids.box, "[BOX]")]
            head_box = self.p_box_norm(p_box) if self.p_box_norm is not None else p_box
            if self.patch_grid is not None:
                boxes, patch_logits = self._point(head_box, hidden2, spatial.input_ids, features, image_index)
            else:
                boxes = self.box_head(head_box, features.clip_tokens.index_select(0, image_index))
            if compute_ce:
                ce2, count2 = self._answer_ce(hidden2, spatial.labels)
                ce_sum, ce_count = ce_sum + ce2, ce_count + count2

        # Stage 3: instance segmentation.
        sam_input = gt_boxes.to(h_sem.device) if box_source == "gt" else boxes
        if gt_box_rows is not None and boxes is not None and box_source == "predicted":
            if gt_boxes is None:
                raise PPCRError("gt_box_rows needs ground-truth boxes")
            rows_gt = gt_box_rows.to(boxes.device).view(-1, 1)
            teacher = gt_boxes if teacher_boxes is None else teacher_boxes
            sam_input = torch.where(rows_gt, teacher.to(boxes), boxes)
        mask_logits, iou, sam_boxes = self._sam_masks(features, image_index, semantic_prompt, sam_input)
        scores = torch.stack([_mask_confidence(m) for m in mask_logits])
        return PPCRPrediction(
            mask_logits=mask_logits,
            boxes=boxes,
            sam_boxes=sam_boxes,
            h_sem=h_sem,
            p_box=p_box,
            semantic_prompt=semantic_prompt,
            iou_predictions=iou,
            scores=scores,
            ce_sum=ce_sum,
            ce_count=ce_count,
            patch_logits=patch_logits,
        )

    def _point(
        self,
        p_box: torch.Tensor,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        features: ImageFeatures,
        image_index: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The pointer head over the spatial stage's image-token states (boxes, patch logits)."""
        slots = input_ids == self.token_ids.image
        batch, patches = input_ids.shape[0], self.image_seq_length
        image_states = hidden[slots].view(batch, patches, hidden.shape[-1])
        sizes = [features.original_sizes[i] for i in image_index.tolist()]
        anchors, cell = self.patch_grid.anchors(sizes, device=p_box.device)
        return self.box_head(p_box, image_states, anchors, cell)

    def target_patches(self, gt_boxes: torch.Tensor, image_index: torch.Tensor, features: ImageFeatures) -> torch.Tensor:
        """Index of the CLIP patch holding each ground-truth box's centre (what patch CE asks for)."""
        sizes = [features.original_sizes[i] for i in image_index.tolist()]
        centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
        return self.patch_grid.patch_index(centres, sizes)

    @torch.no_grad()
    def segment(
        self,
        features: ImageFeatures,
        text: TextInputs,
        *,
        box_source: BoxSource = "predicted",
        gt_boxes: Optional[torch.Tensor] = None,
        share_prefix: bool = True,
    ) -> PPCRPrediction:
        """Inference for any number of expressions against already encoded images.

        ``text.image_index[b]`` picks sample b's image in ``features``. Expressions of one image
        share its encodings and (``share_prefix``) its prompt prefix's KV cache; all are batched.
        """
        return self._predict(
            features, text, box_source=box_source, gt_boxes=gt_boxes, share_prefix=share_prefix, compute_ce=False
        )

    def forward(
        self,
        batch: PPCRBatch,
        box_source: BoxSource = "predicted",
        gt_box_rows: Optional[torch.Tensor] = None,
        teacher_boxes: Optional[torch.Tensor] = None,
    ) -> PPCROutput:
        """Training forward: predictions plus ``loss = λ·(bce, dice, l1, ce)`` (docs/design.md, "Objective").

        Terms without ground truth in the batch are left out (no masks → no bce/dice; no boxes
        or no spatial stage → no l1). ``gt_box_rows`` (bool per sample): those samples' SAM gets
        the ground-truth box instead of the predicted one (``train.gt_box_rate``, teacher forcing);
        the box head is still trained on its own prediction by the L1 term. ``teacher_boxes``
        (B×4, e.g. jittered ground truth) replace the exact boxes for those samples. With the
        pointer head, ``patch_ce`` is the cross-entropy of its patch scores against the patch
        holding the box centre, and ``metrics["patch_acc"]`` the share it points at correctly.
        """
        features = self._encode_images(batch.images)
        prediction = self._predict(
            features,
            batch.text,
            box_source=box_source,
            gt_boxes=batch.gt_boxes,
            share_prefix=False,
            compute_ce=True,
            gt_box_rows=gt_box_rows,
            teacher_boxes=teacher_boxes,
        )
        terms: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {}
        if batch.gt_masks is not None:
            terms["bce"] = L.mask_bce(prediction.mask_logits, batch.gt_masks)
            terms["dice"] = L.mask_dice(prediction.mask_logits, batch.gt_masks)
        if prediction.boxes is not None and batch.gt_boxes is not None:
            terms["l1"] = L.box_l1(prediction.boxes, batch.gt_boxes)
        if prediction.patch_logits is not None and batch.gt_boxes is not None:
            image_index = batch.text.image_index.to(prediction.patch_logits.device)
            target = self.target_patches(batch.gt_boxes.to(prediction.patch_logits.device), image_index, features)
            terms["patch_ce"] = L.patch_ce(prediction.patch_logits, target)
            metrics["patch_acc"] = L.top1_accuracy(prediction.patch_logits, target)
        terms["ce"] = L.answer_ce(prediction.ce_sum, prediction.ce_count)
        loss = L.weighted_total(terms, self.loss_weights)
        return PPCROutput(
            loss=loss,
            losses=terms,
            mask_logits=prediction.mask_logits,
            boxes=prediction.boxes,
            h_sem=prediction.h_sem,
            p_box=prediction.p_box,
            prediction=prediction,
            metrics=metrics,
        )

    # ------------------------------------------------------------------ persistence

    def save_pretrained(
        self,
        directory: str | Path,
        state_dict: Optional[dict[str, torch.Tensor]] = None,
        recipe: Optional[dict] = None,
        store_base: bool = False,
        *,
        metrics: "MetricsArgument" = None,
    ) -> Path:
        """Write a checkpoint directory atomically (see :mod:`ppcr.modeling.checkpoint`).

        ``state_dict`` (keys of ``self.state_dict()``) replaces the module's own tensors, e.g.
        the fp32 master weights a DeepSpeed run consolidates; ``recipe`` (a plain dict) is stored
        for provenance, by default the one the model was built from. ``store_base`` copies a
        referenced base into the checkpoint instead of pointing at it. The folder's ``README.md``
        is a model card; ``metrics`` (``metrics.json`` paths, eval folders, ``EvalResult`` s or
        dicts; default: the evaluations ``ppcr eval`` wrote beside ``directory``) fill its table.
        """
        from ppcr.modeling.checkpoint import save_checkpoint

        return save_checkpoint(
            self, directory, state_dict=state_dict, recipe=recipe if recipe is not None else self.recipe,
            store_base=store_base,
            metrics=metrics,
        )

    def push_to_hub(
        self,
        repo_id: str,
        *,
        metrics: "MetricsArgument" = None,
        private: Optional[bool] = None,
        token: Optional[str] = None,
        revision: Optional[str] = None,
        commit_message: str = "Upload PPCR checkpoint",
    ) -> str:
        """Upload this model as a checkpoint folder (model card included) to the hub repository
        ``repo_id`` (created if needed); return the commit URL. See :mod:`ppcr.modeling.hub`."""
        from ppcr.modeling.hub import push_to_hub

        return push_to_hub(
            self, repo_id, metrics=metrics, private=private, token=token, revision=revision,
            commit_message=commit_message,
        )

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        spec_overrides: Optional[dict] = None,
    ) -> "PPCRModel":
        """Rebuild a model saved with :meth:`save_pretrained` (outputs are bit-identical)."""
        from ppcr.modeling.checkpoint import load_checkpoint

        return load_checkpoint(directory, dtype=dtype, device=device, spec_overrides=spec_overrides)


def _mask_confidence(logits: torch.Tensor) -> torch.Tensor:
    """Mean foreground probability inside the predicted mask; 0 when the mask is empty."""
    inside = logits > 0
    if not bool(inside.any()):
        return logits.new_zeros((), dtype=torch.float32)
    return logits[inside].float().sigmoid().mean()
