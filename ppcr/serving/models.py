"""The checkpoints the demo's model picker offers: the embedded default, ``--model``, and every
``final/`` checkpoint of the training runs under a runs folder (``runs/*/final`` …)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ppcr.modeling.config import CONFIG_NAME  # what marks a checkpoint folder
from ppcr.training.layout import FINAL_DIR
MAX_DEPTH = 3  # runs/<name>/final, runs/<group>/<name>/final, …


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the picker: what the page shows and what is loaded (a folder or a hub id)."""

    label: str
    source: str


def default_choice() -> Optional[ModelChoice]:
    """The model shipped inside the package, if it is installed."""
    from ppcr.inference.model_source import DEFAULT_MODEL

    if not (DEFAULT_MODEL / CONFIG_NAME).is_file():
        return None
    return ModelChoice(f"embedded default ({DEFAULT_MODEL.name})", str(DEFAULT_MODEL))


def run_checkpoints(runs: Path) -> list[ModelChoice]:
    """``final/`` checkpoints below ``runs`` (up to :data:`MAX_DEPTH` folders down), sorted."""
    runs = Path(runs)
    if not runs.is_dir():
        return []
    found = []
    for depth in range(1, MAX_DEPTH + 1):
        pattern = "/".join(["*"] * depth) + f"/{FINAL_DIR}/{CONFIG_NAME}"
        found += [config.parent for config in runs.glob(pattern)]
    return [ModelChoice(path.relative_to(runs.parent).as_posix(), str(path)) for path in sorted(set(found))]


def model_choices(model: Optional[str], runs: Optional[Path]) -> list[ModelChoice]:
    """``model`` (``--model``) first, then the embedded default, then the runs' checkpoints."""
    choices: list[ModelChoice] = []
    if model is not None:
        choices.append(ModelChoice(str(model), str(model)))
    default = default_choice()
    if default is not None:
        choices.append(default)
    if runs is not None:
        choices += run_checkpoints(runs)
    unique: dict[str, ModelChoice] = {}
    for choice in choices:  # the same folder reached twice is listed once, under its first label
        key = str(Path(choice.source).resolve()) if Path(choice.source).exists() else choice.source
        unique.setdefault(key, choice)
    return list(unique.values())
