"""The DeepSpeed configuration of a run, built from the recipe's ``train`` section.

The paper trains with DeepSpeed ZeRO-2, AdamW and WarmupDecayLR; this module is the one place
that turns :class:`~ppcr.config.schema.TrainSpec` into DeepSpeed's dict. The optimizer is
DeepSpeed-configured ``AdamW`` with ``torch_adam: true``, i.e. ``torch.optim.AdamW``: DeepSpeed
would otherwise pick its FusedAdam (GPU) or DeepSpeedCPUAdam (CPU), both C++/CUDA extensions
compiled just-in-time on first use.
"""

from __future__ import annotations

from typing import Any, Optional

from ppcr.config.schema import TrainSpec
from ppcr.training.plan import TrainingPlan

NEVER = 10**12  # DeepSpeed's own periodic printing is replaced by ppcr's metrics


def resolve_precision(requested: str, device_type: str) -> str:
    """The precision a run really uses: the recipe's on GPU, fp32 on CPU.

    CPU training is for smoke tests and the tiny model; bf16 there is slower than fp32 on most
    CPUs and would only add rounding to the CPU-vs-GPU comparison.
    """
    return requested if device_type == "cuda" else "fp32"


def build_deepspeed_config(
    train: TrainSpec, plan: TrainingPlan, precision: str, group_lrs: Optional[list[float]] = None
) -> dict[str, Any]:
    """DeepSpeed's config dict for ``plan`` (``precision`` as returned by :func:`resolve_precision`).

    ``group_lrs``: the peak learning rate of each optimizer parameter group, when the model gives
    several (WarmupDecayLR would otherwise warm every group up to ``train.lr``).
    """
    peak: float | list[float] = [float(lr) for lr in group_lrs] if group_lrs else float(train.lr)
    return {
        "train_batch_size": plan.batch_size,
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.grad_accum,
        "gradient_clipping": float(train.grad_clip),
        "zero_optimization": {"stage": int(train.zero_stage)},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": float(train.lr),
                "betas": [float(b) for b in train.betas],
                "eps": 1e-8,
                "weight_decay": float(train.weight_decay),
                "torch_adam": True,
            },
        },
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {
                "total_num_steps": plan.total_steps,
                "warmup_min_lr": 0.0,
                "warmup_max_lr": peak,
                "warmup_num_steps": plan.warmup_steps,
                "warmup_type": "linear",
            },
        },
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0},
        "steps_per_print": NEVER,
        "wall_clock_breakdown": False,
    }
