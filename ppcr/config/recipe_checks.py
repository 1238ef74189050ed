"""Every check of a recipe's values that the types alone cannot express: ranges, divisibility, loss
weights, LoRA shape, data options. :func:`check_recipe` runs them all.

Why one place: ``load_recipe`` runs them, so ``ppcr recipes show``, ``train``, ``ablate`` and the
library refuse a recipe no run can use in milliseconds, with a message naming the key, before a
run directory, a process or a model exists. ``train()`` and ``build_model()`` run the same
function on recipes built in code. Only what depends on the launch (the world size) or on the data
(its length) is checked later, in :mod:`ppcr.training.plan`.
"""

from __future__ import annotations

import math
from dataclasses import asdict

from ppcr.config.schema import DataSpec, EvalSpec, InitSpec, LoraSpec, LossSpec, ModelSpec, Recipe, TrainSpec
from ppcr.config.tiny_checks import check_tiny_spec
from ppcr.config.yaml_text import short_repr
from ppcr.errors import DataError, RecipeError

SUPPORTED_ZERO_STAGES = (0, 1, 2)


def check_recipe(recipe: Recipe) -> Recipe:
    """Raise a one-line :class:`RecipeError` naming the first key whose value cannot run; return the recipe."""
    check_model_spec(recipe.model)
    check_init_spec(recipe.init)
    check_loss_spec(recipe.loss)
    check_data_spec(recipe.data)
    check_train_spec(recipe.train)
    check_eval_spec(recipe.eval)
    return recipe


def _at_least(key: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        raise RecipeError(f"{key}: must be at least {minimum}, got {value}")


def _positive(key: str, value: float, what: str = "a positive number") -> None:
    if not (math.isfinite(value) and value > 0):
        raise RecipeError(f"{key}: must be {what}, got {value}")


def check_lora_spec(lora: LoraSpec, key: str = "model.lora") -> None:
    """A LoRA shape peft can build: rank ≥ 1, alpha > 0, dropout in [0, 1), some target modules."""
    _at_least(f"{key}.r", lora.r)
    _positive(f"{key}.alpha", lora.alpha)
    if not (math.isfinite(lora.dropout) and 0.0 <= lora.dropout < 1.0):
        raise RecipeError(f"{key}.dropout: must be in [0, 1), got {lora.dropout}")
    if not lora.target_modules:
        raise RecipeError(f"{key}.target_modules: name at least one module, e.g. [q_proj, v_proj]")
    for index, name in enumerate(lora.target_modules):
        if not name.strip():
            raise RecipeError(f"{key}.target_modules[{index}]: must be a module name, got {short_repr(name)}")


def check_model_spec(model: ModelSpec) -> None:
    check_lora_spec(model.lora)
    _at_least("model.max_length", model.max_length)
    if model.spatial_head == "attn":
        head = model.attn_head
        _at_least("model.attn_head.layers", head.layers)
        _at_least("model.attn_head.heads", head.heads)
        _positive("model.attn_head.mlp_ratio", head.mlp_ratio)
        key, dim = ("model.tiny.attn_head_dim", model.tiny.attn_head_dim) if model.size == "tiny" else (
            "model.attn_head.dim", head.dim
        )
        _at_least(key, dim)
        if dim % head.heads:
            raise RecipeError(f"{key}: {dim} is not divisible by model.attn_head.heads = {head.heads}")
    if model.spatial_head == "pointer":
        if model.size == "tiny":
            _at_least("model.tiny.pointer_head_dim", model.tiny.pointer_head_dim)
        else:
            _at_least("model.pointer_head.dim", model.pointer_head.dim)
    check_tiny_spec(model)


def check_init_spec(init: InitSpec) -> None:
    if init.source == "checkpoint" and not init.checkpoint:
        raise RecipeError(
            "init.source=checkpoint needs init.checkpoint (a PPCR checkpoint directory)",
            hint="e.g. init.checkpoint=weights/ppcr-glamm-7b (made by ppcr prepare weights)",
        )


def check_loss_spec(loss: LossSpec) -> None:
    """Every weight is finite and non-negative (a negative one would reward the error it weighs)."""
    for name, value in asdict(loss).items():
        if not math.isfinite(value) or value < 0:
            raise RecipeError(f"loss.{name}: must be a finite weight of 0 or more, got {value}")
    if not any(asdict(loss).values()):
        raise RecipeError("loss: every weight is 0, so nothing would be learned")


def _dataset(key: str, name: str):
    from ppcr.data.datasets import get_dataset

    try:
        return get_dataset(name)
    except DataError as error:
        raise RecipeError(f"{key}: {error.message}", hint=error.hint) from None


def check_data_spec(data: DataSpec) -> None:
    """Known datasets that have the training split; settings the types allow but no run can use."""
    if not data.datasets:
        raise RecipeError("data.datasets: name at least one dataset to train on", hint="e.g. data.datasets=refcoco")
    for index, name in enumerate(data.datasets):
        spec = _dataset(f"data.datasets[{index}]", name)
        if data.train_split not in spec.splits:
            raise RecipeError(
                f"data.train_split: {short_repr(data.train_split)} is not a split of {name}; "
                f"valid: {', '.join(spec.splits)}"
            )
    _at_least("data.sentences_per_image", data.sentences_per_image)
    _at_least("data.num_workers", data.num_workers, 0)


def check_train_spec(train: TrainSpec) -> None:
    """Every optimisation setting; ``batch_size`` must split into micro-batches (one process; the
    world size of the launch is checked by :func:`ppcr.training.plan.gradient_accumulation_steps`)."""
    _at_least("train.micro_batch_size", train.micro_batch_size)
    _at_least("train.batch_size", train.batch_size)
    if train.batch_size % train.micro_batch_size:
        lower = max(train.micro_batch_size, train.batch_size // train.micro_batch_size * train.micro_batch_size)
        raise RecipeError(
            f"train.batch_size: {train.batch_size} is not divisible by train.micro_batch_size = "
            f"{train.micro_batch_size}",
            hint=f"use train.batch_size={lower} or {lower + train.micro_batch_size}, or change train.micro_batch_size",
        )
    if train.max_steps is None and train.epochs < 1:
        raise RecipeError(f"train.epochs: must be at least 1, got {train.epochs}", hint="or set train.max_steps")
    if train.max_steps is not None and train.max_steps < 1:
        raise RecipeError(f"train.max_steps: must be at least 1 (or null), got {train.max_steps}")
    _positive("train.lr", train.lr)
    if train.mllm_lr is not None:
        _positive("train.mllm_lr", train.mllm_lr, "a positive number (or null)")
    if not (0.0 <= train.gt_box_rate <= 1.0):
        raise RecipeError(f"train.gt_box_rate: must be in [0, 1], got {train.gt_box_rate}")
    if not (math.isfinite(train.gt_box_jitter) and train.gt_box_jitter >= 0):
        raise RecipeError(f"train.gt_box_jitter: must be a finite number of 0 or more, got {train.gt_box_jitter}")
    if not (math.isfinite(train.weight_decay) and train.weight_decay >= 0):
        raise RecipeError(f"train.weight_decay: must be ≥ 0, got {train.weight_decay}")
    if len(train.betas) != 2 or not all(0.0 <= b < 1.0 for b in train.betas):
        raise RecipeError(f"train.betas: must be two numbers in [0, 1), got {short_repr(list(train.betas))}")
    if train.warmup_steps < 1:
        raise RecipeError(
            f"train.warmup_steps: must be at least 1, got {train.warmup_steps}",
            hint="DeepSpeed's WarmupDecayLR needs a positive warmup (it treats anything below 2 as 2)",
        )
    if not (math.isfinite(train.grad_clip) and train.grad_clip >= 0):
        raise RecipeError(f"train.grad_clip: must be ≥ 0 (0 disables clipping), got {train.grad_clip}")
    if train.zero_stage not in SUPPORTED_ZERO_STAGES:
        raise RecipeError(
            f"train.zero_stage: {train.zero_stage} is not supported; choose one of "
            f"{', '.join(map(str, SUPPORTED_ZERO_STAGES))}",
            hint="stage 3 partitions the parameters themselves, which the checkpoint export does not gather",
        )
    _at_least("train.save_every", train.save_every)
    _at_least("train.log_every", train.log_every)


def check_eval_spec(eval_spec: EvalSpec) -> None:
    _at_least("eval.batch_size", eval_spec.batch_size)
    for index, text in enumerate(eval_spec.splits):
        key = f"eval.splits[{index}]"
        if "/" not in text:
            raise RecipeError(f"{key}: expected DATASET/SPLIT, got {short_repr(text)}", hint="for example refcoco/val")
        name, split = text.rsplit("/", 1)
        spec = _dataset(key, name)
        if split not in spec.splits:
            raise RecipeError(f"{key}: unknown split {short_repr(split)} for {name}; valid: {', '.join(spec.splits)}")
