"""The arithmetic of a run: accumulation, steps per epoch, total steps — checked before any work.

Everything here is pure Python on the recipe's ``train`` section, the world size and the dataset
length, so a bad setting fails in milliseconds with a message that names the key, before a
process is spawned, a model is built or a file is written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ppcr.config.schema import TrainSpec
from ppcr.errors import DataError, RecipeError


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


def gradient_accumulation_steps(train: TrainSpec, world_size: int) -> int:
    """``batch_size / (micro_batch_size × world_size)``, or a RecipeError naming the numbers.

    The recipe's own values were checked when it was loaded (``ppcr.config.recipe_checks``);
    what is left is whether a batch splits over this many processes.
    """
    if world_size < 1:
        raise RecipeError(f"world size must be at least 1, got {world_size}", hint="use --nproc 1 or more")
    per_step = train.micro_batch_size * world_size
    if train.batch_size % per_step:
        lower = max(per_step, train.batch_size // per_step * per_step)
        raise RecipeError(
            f"train.batch_size: {train.batch_size} is not divisible by micro_batch_size × world size = "
            f"{train.micro_batch_size} × {world_size} = {per_step}",
            hint=f"use train.batch_size={lower} or {lower + per_step}, or change "
            "train.micro_batch_size / --nproc",
        )
    return train.batch_size // per_step


def make_plan(train: TrainSpec, world_size: int, num_samples: int) -> TrainingPlan:
    """The full plan once the dataset length is known."""
    grad_accum = gradient_accumulation_steps(train, world_size)
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
