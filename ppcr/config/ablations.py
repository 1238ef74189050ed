"""Ablation axes: ``spatial-head=attn`` → the overlay ``recipes/ablations/spatial_head/attn.yaml``.

The axes and their values are whatever overlay files ship, so adding a variant is adding a file.
Each overlay holds only the keys it changes and names the paper table row it reproduces.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from ppcr.config.loading import recipes_dir
from ppcr.config.yaml_text import load_yaml
from ppcr.errors import RecipeError


@dataclass(frozen=True)
class AblationChoice:
    axis: str
    value: str
    overlay: Path
    description: str

    @property
    def label(self) -> str:
        return f"{self.axis.replace('_', '-')}={self.value}"


def ablations_dir() -> Path:
    return recipes_dir() / "ablations"


def _description(path: Path) -> str:
    """The overlay's leading comment block (it names the paper row)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip())
    return " ".join(lines)


def list_axes() -> dict[str, list[AblationChoice]]:
    """axis (snake_case) → its choices, in file-name order."""
    axes: dict[str, list[AblationChoice]] = {}
    root = ablations_dir()
    for axis_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        choices = [
            AblationChoice(axis_dir.name, f.stem, f, _description(f))
            for f in sorted(axis_dir.glob("*.yaml"))
        ]
        if choices:
            axes[axis_dir.name] = choices
    return axes


def parse_choice(text: str) -> AblationChoice:
    """Parse ``AXIS=VALUE`` (dashes or underscores in the axis) into a shipped overlay."""
    if "=" not in text:
        raise RecipeError(f"ablation {text!r} is not of the form AXIS=VALUE", hint="e.g. spatial-head=attn")
    axis, value = (part.strip() for part in text.split("=", 1))
    axis = axis.replace("-", "_")
    axes = list_axes()
    if axis not in axes:
        names = [a.replace("_", "-") for a in axes]
        close = difflib.get_close_matches(axis.replace("_", "-"), names, n=1)
        raise RecipeError(
            f"unknown ablation axis {axis.replace('_', '-')!r}; axes: {', '.join(names)}",
            hint=f"did you mean {close[0]!r}?" if close else "run `ppcr ablate --list`",
        )
    for choice in axes[axis]:
        if choice.value == value:
            return choice
    values = [c.value for c in axes[axis]]
    close = difflib.get_close_matches(value, values, n=1)
    raise RecipeError(
        f"unknown value {value!r} for {axis.replace('_', '-')}; choices: {', '.join(values)}",
        hint=f"did you mean {close[0]!r}?" if close else None,
    )


def overlay_data(choice: AblationChoice) -> dict:
    return load_yaml(choice.overlay.read_text(encoding="utf-8"), str(choice.overlay)) or {}
