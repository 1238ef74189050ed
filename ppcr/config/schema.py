"""The typed recipe schema, and the one home of PPCR's choice types.

A recipe is YAML loaded into these dataclasses. Every field is typed, and ``Literal`` fields
list their valid choices, so validation (``ppcr.config.loading``) can name the key, the
expected type and the choices when a value is wrong. Defaults are the paper's setting.

The ``Literal`` choice types that more than one module uses are defined here, the recipe's and
the commands' (``Launcher``, ``DtypeName``, ``WeightsFrom``), so a new choice is added in one
place; :func:`choices` lists a type's values for checks and messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, get_args

SpatialPrompt = Literal["none", "expression", "expression+semantic", "semantic"]
SpatialHead = Literal["mlp", "attn", "pointer"]
PromptOrder = Literal["image_first", "question_first"]
HeadNorm = Literal["none", "batch"]
PositionInit = Literal["random", "sincos"]
BoxSource = Literal["predicted", "gt"]
SamSize = Literal["vit_h", "vit_l", "vit_b", "tiny"]
ModelSize = Literal["7b", "tiny"]
Precision = Literal["bf16", "fp16", "fp32"]
InitFrom = Literal["llava", "glamm", "checkpoint", "random"]
BaseComponent = Literal[
    "language_model", "vision_tower", "projector", "embeddings", "sam_image_encoder", "sam_prompt_encoder"
]
AttnImplementation = Literal["sdpa", "eager"]
# Choices of the commands and the library calls rather than of a recipe key.
Launcher = Literal["auto", "spawn", "deepspeed"]  # how --nproc ranks are started
DtypeName = Literal["auto", "fp32", "bf16", "fp16"]  # --dtype words (ppcr.utils.device)
WeightsFrom = Literal["llava", "glamm"]  # ppcr prepare weights --from


def choices(choice_type) -> tuple[str, ...]:
    """The values of a ``Literal`` choice type, in their declared order."""
    return get_args(choice_type)


@dataclass
class LoraSpec:
    """One LoRA adapter's shape (both adapters share it; GLaMM's values by default)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class AttnHeadSpec:
    """The attention box head of Table 3 (self-attention + cross-attention to image tokens).

    ``dim`` is the head's working width: the query (P_box^seg) and the image tokens (projector
    outputs, LLM width) are projected to it. At 1024 the 7B head has ~43 M parameters against
    the F_Map MLP's ~17 M, the "substantially higher complexity" the paper reports.
    """

    layers: int = 2
    heads: int = 8
    mlp_ratio: float = 4.0
    dim: int = 1024


@dataclass
class PointerHeadSpec:
    """The pointer box head (our extension, not in the paper): P_box^seg scores the image tokens,
    each proposes a box around its patch. ``dim`` is the width of its query, keys and proposal MLP."""

    dim: int = 256


@dataclass
class TinySpec:
    """Sizes of the tiny model used on CPU (only read when ``model.size``/``model.sam`` is ``tiny``).

    Same classes as the real model (CLIP vision tower, Llama, SAM), small widths. The tokenizer is
    a byte-level BPE trained on the Shapes-Ref words and the prompt templates; ``vocab_size`` is
    its size before the PPCR tokens are added. ``attn_head_dim`` replaces ``attn_head.dim`` for
    the tiny model (the ablation overlays set only ``spatial_head``), ``pointer_head_dim``
    ``pointer_head.dim``. ``init_std`` is the normal
    init's std of the tiny LLM's weights and of CLIP's patch and position embeddings (transformers'
    ``initializer_range``). ``clip_position_init: sincos`` starts CLIP's learned position
    embeddings as 2-D sine-cosine codes (as MAE's ViT) instead of small random vectors, so image
    tokens carry their position from the first step, as a pretrained CLIP's do.
    """

    image_size: int = 64
    clip_patch_size: int = 8
    clip_hidden: int = 64
    clip_layers: int = 2
    clip_heads: int = 4
    clip_intermediate: int = 128
    llm_hidden: int = 128
    llm_layers: int = 2
    llm_heads: int = 4
    llm_intermediate: int = 256
    vocab_size: int = 1024
    sam_image_size: int = 128
    sam_patch_size: int = 8
    sam_embed_dim: int = 64
    sam_depth: int = 2
    sam_heads: int = 4
    sam_window_size: int = 0
    sam_prompt_dim: int = 64
    sam_decoder_mlp_dim: int = 256
    sam_decoder_heads: int = 4
    attn_head_dim: int = 64
    pointer_head_dim: int = 64
    init_std: float = 0.02
    clip_position_init: PositionInit = "random"


@dataclass
class ModelSpec:
    """Architecture and the PPCR variant knobs (docs/design.md, "Variants").

    ``max_length`` bounds the text tokens of one stage's prompt (the image tokens come on top).
    ``head_norm: batch`` standardises h_sem and P_box^seg per feature before the heads; it is not
    in the paper (its pretrained LLM does not need it) and helps a randomly initialised tiny LLM.
    ``clip_pad_to_square``: LLaVA-1.5 pads the image to a square before CLIP (True); GLaMM
    centre-crops (False). ``attn_implementation`` is passed to transformers.
    """

    size: ModelSize = "7b"
    sam: SamSize = "vit_h"
    spatial_prompt: SpatialPrompt = "semantic"
    spatial_head: SpatialHead = "mlp"
    attn_head: AttnHeadSpec = field(default_factory=AttnHeadSpec)
    pointer_head: PointerHeadSpec = field(default_factory=PointerHeadSpec)
    # Where the question goes in each stage's prompt: after the image (LLaVA-1.5's
    # "<image>\n{question}", the default) or before it ("{question}\n<image>", also in LLaVA's
    # data), so the image tokens read the question; that loses the per-image shared prefix.
    prompt_order: PromptOrder = "image_first"
    head_norm: HeadNorm = "none"
    lora: LoraSpec = field(default_factory=LoraSpec)
    max_length: int = 512
    clip_pad_to_square: bool = True
    attn_implementation: AttnImplementation = "sdpa"
    # Base components to train too. The paper freezes them all (they are pretrained); a tiny
    # randomly initialised base has nothing to keep, so the shapes recipe trains it.
    unfreeze: list[BaseComponent] = field(default_factory=list)
    tiny: TinySpec = field(default_factory=TinySpec)


@dataclass
class InitSpec:
    """Where the weights come from (hub ids or local directories / files)."""

    source: InitFrom = "glamm"
    checkpoint: Optional[str] = None
    llava: str = "llava-hf/llava-1.5-7b-hf"
    clip: str = "openai/clip-vit-large-patch14-336"
    glamm_base: str = "MBZUAI/GLaMM-GranD-Pretrained"
    glamm_semantic: str = "MBZUAI/GLaMM-RefSeg"
    sam_checkpoint: Optional[str] = "sam_vit_h_4b8939.pth"
    # A tokenizer directory or hub id (default: the one of ``llava``), or ``stand-in``: llava-hf's
    # layout without a download, for random-weight real-size runs (ppcr/modeling/tokenizer.py).
    tokenizer: Optional[str] = None


@dataclass
class LossSpec:
    """Weights λ1..λ4 of the objective (paper eq. 7)."""

    bce: float = 2.0
    dice: float = 0.5
    l1: float = 2.0
    ce: float = 0.5
    # Not in the paper: cross-entropy of the pointer head's patch scores against the patch that
    # holds the ground-truth box's centre. Ignored by the other heads, so
    # the mlp/attn overlays compose with a pointer recipe.
    patch_ce: float = 0.0


@dataclass
class DataSpec:
    """Which refer-layout datasets to train on and where they live."""

    root: str = "data/refer_seg"
    images: Optional[str] = None
    datasets: list[str] = field(default_factory=lambda: ["refcoco", "refcoco+", "refcocog"])
    train_split: str = "train"
    num_workers: int = 4
    # Up to this many sentences of one image come next to each other in the data order, so a
    # batch asks several questions about the same picture (LISA and GLaMM draw 3 per image) and
    # the image is encoded once for them. 1: every sentence shuffled on its own.
    sentences_per_image: int = 1


@dataclass
class TrainSpec:
    """Optimisation (DeepSpeed ZeRO-2, AdamW, WarmupDecayLR)."""

    epochs: int = 5
    batch_size: int = 8
    micro_batch_size: int = 2
    max_steps: Optional[int] = None
    lr: float = 3e-4
    # Learning rate of the MLLM's trainable parameters (LoRA adapters, added token rows and any
    # unfrozen LLaVA part); null = ``lr``. The heads and SAM always use ``lr``.
    mllm_lr: Optional[float] = None
    # Share of training samples whose SAM gets the ground-truth box instead of the predicted one
    # (teacher forcing, drawn per sample). 0 is the paper; a from-scratch SAM otherwise never sees
    # a box good enough to learn box → mask from.
    gt_box_rate: float = 0.0
    # With gt_box_rate: the teacher-forced box is jittered as a pointer that found the right CLIP
    # patch would give it: centre redrawn inside its patch, width and height scaled by
    # exp(U(-j, j)). 0: the exact box.
    gt_box_jitter: float = 0.0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    scheduler: Literal["WarmupDecayLR"] = "WarmupDecayLR"
    warmup_steps: int = 100
    grad_clip: float = 1.0
    precision: Precision = "bf16"
    zero_stage: int = 2
    save_every: int = 500
    log_every: int = 10


@dataclass
class EvalSpec:
    """Evaluation protocol (docs/design.md, "Evaluation")."""

    box_source: BoxSource = "predicted"
    splits: list[str] = field(
        default_factory=lambda: [
            "refcoco/val",
            "refcoco/testA",
            "refcoco/testB",
            "refcoco+/val",
            "refcoco+/testA",
            "refcoco+/testB",
            "refcocog/val",
            "refcocog/test",
        ]
    )
    batch_size: int = 16


@dataclass
class Recipe:
    """A whole recipe: everything a run needs, saved beside it as ``recipe.yaml``."""

    name: str = "unnamed"
    description: str = ""
    seed: int = 42
    model: ModelSpec = field(default_factory=ModelSpec)
    init: InitSpec = field(default_factory=InitSpec)
    loss: LossSpec = field(default_factory=LossSpec)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
