"""Shapes-Ref examples shipped with the package, so the demo has something to show offline.

They are images of ``ppcr prepare shapes`` (seed 0, val split) with expressions of that split;
``examples.json`` beside them says how they were chosen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "shapes-examples"
INDEX_FILE = "examples.json"


@dataclass(frozen=True)
class DemoExample:
    """One shipped image and the expressions typed for it (one per line in the page)."""

    image: Path
    image_id: int
    expressions: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.expressions)


def shapes_examples(folder: Path = EXAMPLES_DIR) -> list[DemoExample]:
    """The shipped examples, in the order of ``examples.json`` (none if the folder is missing)."""
    index = folder / INDEX_FILE
    if not index.is_file():
        return []
    data = json.loads(index.read_text(encoding="utf-8"))
    return [
        DemoExample(image=folder / item["image"], image_id=int(item["image_id"]), expressions=tuple(item["expressions"]))
        for item in data["examples"]
    ]
