"""A tiny model and dataset that follow the trainer's model contract, for the engine's tests.

Like PPCR it has a frozen part (a random "encoder" rebuilt from the seed) and a trainable part
(a small MLP head with optional dropout), returns a weighted ``.loss`` plus unweighted
``.losses``, casts its inputs to its own dtype, and saves/loads a self-contained directory
(``config.json`` + ``model.safetensors``). A ``nan_at_forward`` flag makes the n-th training
forward (counted per process) return a NaN term, to test the trainer's non-finite-loss stop.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

IN_DIM = 8


@dataclass
class StandInConfig:
    in_dim: int = IN_DIM
    hidden: int = 16
    dropout: float = 0.0
    nan_at_forward: Optional[int] = None  # 1-based count of training forwards in this process
    nan_rank: Optional[int] = None  # only this rank produces the NaN (None: every rank)


@dataclass
class StandInOutput:
    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # logged, never optimised


class StandInModel(nn.Module):
    """Frozen random projection → trainable MLP → scalar regression."""

    def __init__(self, config: StandInConfig):
        super().__init__()
        self.config = config
        self.encoder = nn.Linear(config.in_dim, config.hidden)
        self.encoder.requires_grad_(False)
        self.head = nn.Sequential(
            nn.Linear(config.hidden, config.hidden),
            nn.Tanh(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, 1),
        )
        self.forward_calls = 0

    def forward(self, batch: dict[str, torch.Tensor]) -> StandInOutput:
        dtype = self.head[0].weight.dtype
        prediction = self.head(torch.tanh(self.encoder(batch["x"].to(dtype)))).squeeze(-1).float()
        target = batch["y"].float()
        mse = torch.mean((prediction - target) ** 2)
        l1 = torch.mean(torch.abs(prediction - target))
        if self.training:
            self.forward_calls += 1
            if self.forward_calls == self.config.nan_at_forward and self._is_nan_rank():
                mse = mse * float("nan")
        worst = torch.max(torch.abs(prediction - target)).detach()
        return StandInOutput(loss=mse + 0.5 * l1, losses={"mse": mse, "l1": l1}, metrics={"max_abs_error": worst})

    def _is_nan_rank(self) -> bool:
        if self.config.nan_rank is None:
            return True
        import torch.distributed as dist

        return dist.is_initialized() and dist.get_rank() == self.config.nan_rank

    def save_pretrained(
        self, directory: str | Path, state_dict: Optional[dict[str, torch.Tensor]] = None
    ) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = self.state_dict() if state_dict is None else state_dict
        config = {k: v for k, v in asdict(self.config).items() if k not in ("nan_at_forward", "nan_rank")}
        (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        save_file(tensors, str(directory / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "StandInModel":
        directory = Path(directory)
        config = StandInConfig(**json.loads((directory / "config.json").read_text(encoding="utf-8")))
        model = cls(config)
        state = load_file(str(directory / "model.safetensors"))
        model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
        return model.eval()


class StandInFactory:
    """Picklable model factory (what ``spawn`` sends to each rank)."""

    def __init__(self, **config: Any):
        self.config = config

    def __call__(self, recipe) -> StandInModel:
        return StandInModel(StandInConfig(**self.config))


class SyntheticRegression(Dataset):
    """``y = sin(x·w) + 0.5·x₀`` on Gaussian ``x``; deterministic from the seed."""

    def __init__(self, size: int = 64, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, IN_DIM, generator=generator)
        w = torch.randn(IN_DIM, generator=generator)
        self.y = torch.sin(self.x @ w) + 0.5 * self.x[:, 0]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "y": self.y[index], "index": torch.tensor(index)}


def build_dataset(recipe) -> SyntheticRegression:
    return SyntheticRegression(size=64, seed=recipe.seed)


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def dataset_loss(model: nn.Module, dataset: SyntheticRegression) -> float:
    """The weighted loss over the whole dataset in eval mode (no dropout)."""
    model.eval()
    with torch.no_grad():
        return float(model({"x": dataset.x, "y": dataset.y}).loss)
