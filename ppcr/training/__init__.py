"""The training engine behind ``ppcr train`` (DeepSpeed ZeRO-2, AdamW, WarmupDecayLR).

Entry point: :func:`ppcr.training.run.train`, which trains PPCR (:mod:`ppcr.training.ppcr_task`)
or, handed factories, any model that follows the contract in :mod:`ppcr.training.loop`. Names are imported lazily so that importing this
package does not import torch or DeepSpeed.
"""

from __future__ import annotations

from ppcr.lazy import lazy_getattr

_LAZY = {
    "train": "ppcr.training.run",
    "TrainResult": "ppcr.training.result",
    "TrainingError": "ppcr.training.errors",
    "NonFiniteLossError": "ppcr.training.errors",
    "TrainingPlan": "ppcr.training.plan",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr("ppcr.training", _LAZY)
