"""The arithmetic of a run: accumulation, steps per epoch, total steps — checked before any work.

Everything here is pure Python on the recipe's ``train`` section, the world size and the dataset
length, so a bad setting fails in milliseconds with a message that names the key, before a
process is spawned, a model is built or a file is written.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ppcr.config.schema import TrainSpec
from ppcr.errors import DataError, RecipeError

SUPPORTED_ZERO_STAGES = (0, 1, 2)


@dataclass(frozen=True)
class TrainingPlan:
    """How many samples go where, and for how long.

    One optimizer step consumes ``batch_size`` samples: ``grad_accum`` micro-steps on each of
    ``world_size`` ranks, ``micro_batch_size`` samples each. An epoch is
    ``steps_per_epoch = num_samples // batch_size`` steps (the tail that does not fill a batch is
    left out, different samples each epoch). ``total_steps`` is ``train.max_steps`` when set
    (epochs then wrap as needed), else ``epochs × steps_per_epoch``.
    """

    world_size: int
    batch_size: int
    micro_batch_size: int
    grad_accum: int
    num_samples: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    save_every: int
    log_every: int

    def epoch_of(self, step: int) -> int:
        """Epoch (0-based) that optimizer step ``step`` (0-based count of finished steps) falls in."""
        return step // self.steps_per_epoch

    def as_dict(self) -> dict:
        return asdict(self)


def _fail(key: str, message: str, hint: str | None = None) -> RecipeError:
    return RecipeError(f"train.{key}: {message}", hint=hint)


def gradient_accumulation_steps(train: TrainSpec, world_size: int) -> int:
    """``batch_size / (micro_batch_size × world_size)``, or a RecipeError naming the numbers."""
    if world_size < 1:
        raise RecipeError(f"world size must be at least 1, got {world_size}", hint="use --nproc 1 or more")
    if train.micro_batch_size < 1:
        raise _fail("micro_batch_size", f"must be at least 1, got {train.micro_batch_size}")
    if train.batch_size < 1:
        raise _fail("batch_size", f"must be at least 1, got {train.batch_size}")
    per_step = train.micro_batch_size * world_size
    if train.batch_size % per_step:
        lower = max(per_step, train.batch_size // per_step * per_step)
        raise _fail(
            "batch_size",
            f"{train.batch_size} is not divisible by micro_batch_size × world size = "
            f"{train.micro_batch_size} × {world_size} = {per_step}",
            hint=f"use train.batch_size={lower} or {lower + per_step}, or change "
            "train.micro_batch_size / --nproc",
        )
    return train.batch_size // per_step


def check_train_spec(train: TrainSpec, world_size: int) -> int:
    """Validate every optimisation setting that does not need the data; return the accumulation."""
    grad_accum = gradient_accumulation_steps(train, world_size)
    if train.max_steps is None and train.epochs < 1:
        raise _fail("epochs", f"must be at least 1, got {train.epochs}", hint="or set train.max_steps")
    if train.max_steps is not None and train.max_steps < 1:
        raise _fail("max_steps", f"must be at least 1 (or null), got {train.max_steps}")
    if not (math.isfinite(train.lr) and train.lr > 0):
        raise _fail("lr", f"must be a positive number, got {train.lr}")
    if not (0.0 <= train.gt_box_rate <= 1.0):
        raise _fail("gt_box_rate", f"must be in [0, 1], got {train.gt_box_rate}")
    if not (math.isfinite(train.gt_box_jitter) and train.gt_box_jitter >= 0):
        raise _fail("gt_box_jitter", f"must be a finite number of 0 or more, got {train.gt_box_jitter}")
    if train.mllm_lr is not None and not (math.isfinite(train.mllm_lr) and train.mllm_lr > 0):
        raise _fail("mllm_lr", f"must be a positive number (or null), got {train.mllm_lr}")
    if not (math.isfinite(train.weight_decay) and train.weight_decay >= 0):
        raise _fail("weight_decay", f"must be ≥ 0, got {train.weight_decay}")
    if len(train.betas) != 2 or not all(0.0 <= b < 1.0 for b in train.betas):
        raise _fail("betas", f"must be two numbers in [0, 1), got {list(train.betas)}")
    if train.warmup_steps < 1:
        raise _fail(
            "warmup_steps",
            f"must be at least 1, got {train.warmup_steps}",
            hint="DeepSpeed's WarmupDecayLR needs a positive warmup (it treats anything below 2 as 2)",
        )
    if not (math.isfinite(train.grad_clip) and train.grad_clip >= 0):
        raise _fail("grad_clip", f"must be ≥ 0 (0 disables clipping), got {train.grad_clip}")
    if train.zero_stage not in SUPPORTED_ZERO_STAGES:
        raise _fail(
            "zero_stage",
            f"{train.zero_stage} is not supported; choose one of "
            f"{', '.join(map(str, SUPPORTED_ZERO_STAGES))}",
            hint="stage 3 partitions the parameters themselves, which the checkpoint export does not gather",
        )
    if train.precision not in ("bf16", "fp16", "fp32"):
        raise _fail("precision", f"{train.precision!r} is not one of bf16, fp16, fp32")
    if train.save_every < 1:
        raise _fail("save_every", f"must be at least 1, got {train.save_every}")
    if train.log_every < 1:
        raise _fail("log_every", f"must be at least 1, got {train.log_every}")
    return grad_accum


def make_plan(train: TrainSpec, world_size: int, num_samples: int) -> TrainingPlan:
    """The full plan once the dataset length is known."""
    grad_accum = check_train_spec(train, world_size)
    steps_per_epoch = num_samples // train.batch_size
    if steps_per_epoch < 1:
        raise DataError(
            f"the training set has {num_samples} samples, fewer than one batch "
            f"(train.batch_size={train.batch_size})",
            hint="add data or lower train.batch_size",
        )
    total = train.max_steps if train.max_steps is not None else train.epochs * steps_per_epoch
    return TrainingPlan(
        world_size=world_size,
        batch_size=train.batch_size,
        micro_batch_size=train.micro_batch_size,
        grad_accum=grad_accum,
        num_samples=num_samples,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=train.warmup_steps,
        save_every=train.save_every,
        log_every=train.log_every,
    )
