"""Model-agnostic training engine behind ``ppcr train`` (DeepSpeed ZeRO-2, AdamW, WarmupDecayLR).

Entry point: :func:`ppcr.training.run.train`. Names are imported lazily so that importing this
package does not import torch or DeepSpeed.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "train": "ppcr.training.run",
    "TrainResult": "ppcr.training.result",
    "TrainingError": "ppcr.training.errors",
    "NonFiniteLossError": "ppcr.training.errors",
    "TrainingPlan": "ppcr.training.plan",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ppcr.training' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
