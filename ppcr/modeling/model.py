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

This module wires the stages together; each concern has its own module:
:mod:`~ppcr.modeling.variant` (which modules a variant has), :mod:`~ppcr.modeling.freezing`
(what trains), :mod:`~ppcr.modeling.adapters` (adapter switching), :mod:`~ppcr.modeling.prefix_cache`
(the shared prompt prefix), :mod:`~ppcr.modeling.sam_prompting` (stage 3),
:mod:`~ppcr.modeling.losses` (the objective), :mod:`~ppcr.modeling.outputs` (what it returns) and
:mod:`~ppcr.modeling.checkpoint` (saving and loading).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from ppcr.config.schema import BoxSource, LossSpec, ModelSpec, choices
from ppcr.data.preprocess import SamTransform
from ppcr.errors import PPCRError
from ppcr.modeling import checkpoint, freezing, losses, prefix_cache, variant
from ppcr.modeling.adapters import SEMANTIC, SPATIAL, AdapterSet
from ppcr.modeling.batch import ImageInputs, PPCRBatch, StageInputs, TextInputs
from ppcr.modeling.config import BaseWeights, PromptFormat, TokenIds
from ppcr.modeling.heads import AttnBoxHead, BoxMLP, PointerBoxHead, SemanticProjection, StateStandardiser
from ppcr.modeling.llava import ensure_vocab_rows, image_seq_length
from ppcr.modeling.outputs import ImageFeatures, PPCROutput, PPCRPrediction
from ppcr.modeling.patch_grid import PatchGrid
from ppcr.modeling.sam_prompting import mask_confidence, sam_masks
from ppcr.modeling.token_rows import AddedTokenRows

if TYPE_CHECKING:  # pragma: no cover
    from segment_anything.modeling import Sam
    from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerBase

    from ppcr.modeling.model_card import MetricsArgument


def _positions_before(input_ids: torch.Tensor, token_id: int, what: str) -> torch.Tensor:
    """Index of the position preceding the single occurrence of ``token_id`` in each row."""
    hits = input_ids == token_id
    counts = hits.sum(dim=1)
    if not bool((counts == 1).all()):
        raise PPCRError(f"every prompt must contain exactly one {what} token; counts: {counts.tolist()}")
    return hits.to(torch.long).argmax(dim=1) - 1


def _sam_box_input(
    boxes: Optional[torch.Tensor],
    box_source: BoxSource,
    gt_boxes: Optional[torch.Tensor],
    gt_box_rows: Optional[torch.Tensor],
    teacher_boxes: Optional[torch.Tensor],
    device: torch.device,
) -> Optional[torch.Tensor]:
    """The boxes SAM is prompted with: the ground truth (``box_source='gt'``), else the predicted
    ones, except in the teacher-forced ``gt_box_rows``, which get ``teacher_boxes`` (default: the
    ground truth)."""
    sam_input = gt_boxes.to(device) if box_source == "gt" else boxes
    if gt_box_rows is not None and boxes is not None and box_source == "predicted":
        if gt_boxes is None:
            raise PPCRError("gt_box_rows needs ground-truth boxes")
        rows_gt = gt_box_rows.to(boxes.device).view(-1, 1)
        teacher = gt_boxes if teacher_boxes is None else teacher_boxes
        sam_input = torch.where(rows_gt, teacher.to(boxes), boxes)
    return sam_input


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
        base_name = base.llava if base is not None else None
        self.adapters = AdapterSet.attach(llava, spec.lora, variant.adapter_names(spec), base_name)
        self.llm = self.adapters.peft_model
        self.sam = sam

        hidden = self.hidden_size
        sam_dim = sam.prompt_encoder.embed_dim
        self.token_rows = AddedTokenRows.from_base(
            token_ids.added, self.llava.get_input_embeddings(), self.llava.get_output_embeddings()
        )
        self.semantic_proj = SemanticProjection(hidden, sam_dim)
        modules = variant.trained_module_paths(spec)
        self.sem_to_input = nn.Linear(hidden, hidden) if "sem_to_input" in modules else None
        self.box_head: Optional[nn.Module] = None
        self.patch_grid: Optional[PatchGrid] = None
        if "box_head" in modules:
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
        self.h_sem_norm = StateStandardiser(hidden) if "h_sem_norm" in modules else None
        self.p_box_norm = StateStandardiser(hidden) if "p_box_norm" in modules else None
        self.sam_transform = SamTransform(target_length=self.sam_image_size)
        freezing.set_trainable(self)

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
        """Name → attribute path of the fully trainable modules besides the LoRA adapters
        (what ``heads.safetensors`` holds; decided by :func:`ppcr.modeling.variant.trained_module_paths`)."""
        return variant.trained_module_paths(self.spec)

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

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of everything the optimizer should update."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the LLM layers' activations in backward (saves memory on the 7B model), each
        through the adapter it ran with (:meth:`AdapterSet.route_checkpoint_recomputation`)."""
        self.language_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.adapters.route_checkpoint_recomputation(self.language_model)

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
                shared = prefix_cache.shared_prefix_hidden(self, stage, clip_tokens, image_index, sem_input)
                if shared is not None:
                    return shared
            # index_select, not clip_tokens[image_index]: with an image repeated in the batch the
            # indexing backward accumulated in a varying order on CPU, so reruns drifted apart.
            embeds = self._input_embeddings(stage.input_ids, clip_tokens.index_select(0, image_index), sem_input)
            out = self._language_model(embeds, stage.attention_mask, use_cache=False)
            return out.last_hidden_state

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
        """Stage 3 (:func:`ppcr.modeling.sam_prompting.sam_masks`)."""
        return sam_masks(self.sam, self.sam_transform, features, image_index, semantic_prompt, boxes)

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
        sam_input = _sam_box_input(boxes, box_source, gt_boxes, gt_box_rows, teacher_boxes, h_sem.device)
        mask_logits, iou, sam_boxes = self._sam_masks(features, image_index, semantic_prompt, sam_input)
        scores = torch.stack([mask_confidence(m) for m in mask_logits])
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
        """Training forward: predictions plus ``loss = λ·(bce, dice, l1, ce)`` (:func:`ppcr.modeling.losses.objective`;
        docs/design.md, "Objective"). The training step that calls it (templates, teacher-forcing
        draws) is :class:`ppcr.training.ppcr_task.PPCRTrainModule`.

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
        target = None
        if prediction.patch_logits is not None and batch.gt_boxes is not None:
            gt_boxes = batch.gt_boxes.to(prediction.patch_logits.device)
            target = self.target_patches(gt_boxes, batch.text.image_index, features)  # the index is only read
        loss, terms, metrics = losses.objective(prediction, batch.gt_masks, batch.gt_boxes, target, self.loss_weights)
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
        return checkpoint.save_checkpoint(
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
        return checkpoint.load_checkpoint(
            directory, model_class=cls, dtype=dtype, device=device, spec_overrides=spec_overrides
        )

