"""The optimizer's parameter groups: everything at ``train.lr``, or the MLLM at ``train.mllm_lr``.

Why two rates: a randomly initialised tiny LLM trained at the heads' rate moves its states faster
than the heads can follow; a slower MLLM (experiments/probe_shapes_learning.py, ``--base-lr``)
lets the heads fit. Models that support the split say which of their parameters are the MLLM's
with ``is_mllm_parameter(name)``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ppcr.config.schema import TrainSpec
from ppcr.training.errors import TrainingError


def optimizer_groups(model: nn.Module, train: TrainSpec) -> list[dict[str, Any]]:
    """Trainable parameters as DeepSpeed/torch parameter groups, each with its peak ``lr``."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if train.mllm_lr is None:
        return [{"params": [p for _, p in named], "lr": float(train.lr)}]
    is_mllm = getattr(model, "is_mllm_parameter", None)
    if is_mllm is None:
        raise TrainingError(
            f"train.mllm_lr is set, but {type(model).__name__} does not say which parameters are the MLLM's",
            hint="remove train.mllm_lr",
        )
    mllm = [p for name, p in named if is_mllm(name)]
    rest = [p for name, p in named if not is_mllm(name)]
    groups = [{"params": rest, "lr": float(train.lr)}, {"params": mllm, "lr": float(train.mllm_lr)}]
    return [group for group in groups if group["params"]]
