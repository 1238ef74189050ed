"""What a finished training run reports back to its caller (plain data, JSON round-trippable)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional


@dataclass
class TrainResult:
    """Summary of a run, as seen by rank 0 (``weight_digests`` has one entry per rank).

    ``weight_digests[r]`` is the SHA-256 of rank r's live trainable parameters at the end (see
    :func:`ppcr.training.checkpointing.trainable_digest`); equal digests mean every rank ended
    with identical parameters. ``samples_per_s`` excludes time spent writing checkpoints.
    """

    run_dir: str
    final_dir: str
    steps: int
    total_steps: int
    start_step: int
    world_size: int
    precision: str
    zero_stage: int
    device: str
    samples_per_s: float
    wall_s: float
    last_metrics: dict[str, Any] = field(default_factory=dict)
    weight_digests: list[str] = field(default_factory=list)
    resumed_from_step: Optional[int] = None

    @property
    def final_path(self) -> Path:
        return Path(self.final_dir)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainResult":
        return cls(**data)
