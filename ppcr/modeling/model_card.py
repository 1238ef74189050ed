"""The model card (``README.md``) every checkpoint folder carries, so it can go to the hub as it is.

The card says what the folder holds (the recipe, where the frozen base weights come from), how well
it did when it was scored (the ``metrics.json`` files of ``ppcr eval``, passed in or found where
``ppcr eval`` writes them for this folder) and how to load it. It starts with the hub's YAML front
matter (``library_name``, ``pipeline_tag``, ``tags``, ``base_model`` for a hub base). Loading
never reads it.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from ppcr.errors import DataError
from ppcr.evaluation.outputs import METRICS_FILE, read_metrics

if TYPE_CHECKING:  # pragma: no cover
    from ppcr.evaluation.evaluate import EvalResult
    from ppcr.modeling.config import BaseWeights, PPCRConfig

CARD_NAME = "README.md"
METRIC_COLUMNS = ("oIoU", "mIoU", "P@0.5", "P@0.7", "P@0.9")
# One evaluation: a metrics.json's content, an EvalResult, or the path of a metrics.json or of a
# folder holding them (an eval folder or a run).
MetricsSource = Union[Mapping[str, Any], "EvalResult", str, "os.PathLike[str]"]
MetricsArgument = Union[MetricsSource, Sequence[MetricsSource], None]


def _metrics_files(folder: Path) -> list[Path]:
    """metrics.json files of ``folder`` as ``ppcr eval`` lays them out (``<out>/<ds>_<split>/``)."""
    patterns = (METRICS_FILE, f"*/{METRICS_FILE}", f"eval*/*/{METRICS_FILE}")
    return sorted({path for pattern in patterns for path in folder.glob(pattern) if path.is_file()})


def _one(source: MetricsSource) -> list[dict[str, Any]]:
    to_json = getattr(source, "to_json", None)
    if callable(to_json):  # an EvalResult
        return [dict(to_json())]
    if isinstance(source, Mapping):
        return [dict(source)]
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = _metrics_files(path)
            if not files:
                raise DataError(f"no {METRICS_FILE} under {path}", hint="pass the folder `ppcr eval --out` wrote")
            return [read_metrics(file) for file in files]
        return [read_metrics(path)]
    raise DataError(
        f"cannot read metrics from a {type(source).__name__}",
        hint="pass metrics.json paths, eval folders, EvalResult objects or dicts",
    )


def collect_evaluations(metrics: MetricsArgument, checkpoint: Optional[Path] = None) -> list[dict[str, Any]]:
    """The evaluations to show: ``metrics`` if given, else those found beside ``checkpoint``.

    "Beside" means where ``ppcr eval --model CHECKPOINT`` writes by default: ``<run>/eval*/`` for a
    run's ``final/`` (or the checkpoint's own ``eval*/`` outside a run).
    """
    if metrics is None:
        return evaluations_beside(checkpoint) if checkpoint is not None else []
    single = isinstance(metrics, (Mapping, str, os.PathLike)) or callable(getattr(metrics, "to_json", None))
    sources: Sequence[MetricsSource] = [metrics] if single else metrics  # type: ignore[assignment,list-item]
    return [evaluation for source in sources for evaluation in _one(source)]


def evaluations_beside(checkpoint: Path) -> list[dict[str, Any]]:
    """Every readable ``metrics.json`` in the default eval folders of ``checkpoint``."""
    from ppcr.evaluation.runs import run_dir_of

    base = run_dir_of(checkpoint) or Path(checkpoint)
    found = []
    for folder in sorted(base.glob("eval*")):
        for path in sorted(folder.glob(f"*/{METRICS_FILE}")):
            try:
                found.append(read_metrics(path))
            except DataError:
                continue  # a damaged file beside the checkpoint must not stop a save
    return found


# ----------------------------------------------------------------------------- rendering


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _metrics_table(evaluations: Sequence[Mapping[str, Any]]) -> list[str]:
    rows: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    for data in evaluations:  # one row per (dataset, split, box source); a later file wins
        key = (str(data.get("dataset", "?")), str(data.get("split", "?")), str(data.get("box_source") or "predicted"))
        rows[key] = data
    header = ["dataset", "split", "box", *METRIC_COLUMNS, "sentences"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (dataset, split, box), data in sorted(rows.items()):
        cells = [dataset, split, box, *(_number(data.get(c)) for c in METRIC_COLUMNS), _number(data.get("count"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _is_hub_id(value: Optional[str]) -> bool:
    from ppcr.inference.model_source import looks_like_hub_id

    return value is not None and not os.path.exists(value) and looks_like_hub_id(value)


def _base_line(what: str, value: Optional[str], base: "BaseWeights") -> str:
    if base.kind == "stored":
        return f"- {what}: stored in this folder (`{value}`)" if value else f"- {what}: stored in this folder"
    if value is None:
        return f"- {what}: not recorded"
    if _is_hub_id(value):
        return f"- {what}: the hub model `{value}` (referenced, downloaded on first load, not included here)"
    return (
        f"- {what}: the local file or folder `{value}` (referenced, **not included here**: a copy of this "
        "folder loads only where that path exists)"
    )


def _recipe_lines(config: "PPCRConfig") -> list[str]:
    recipe = config.recipe or {}
    spec = config.model
    lines = []
    if recipe.get("name"):
        lines.append(f"- recipe: `{recipe['name']}`" + (f" — {recipe['description']}" if recipe.get("description") else ""))
    lines.append(
        f"- model: size `{spec.size}`, SAM `{spec.sam}`, spatial prompt `{spec.spatial_prompt}`, "
        f"spatial head `{spec.spatial_head}`, LoRA r={spec.lora.r} α={spec.lora.alpha} on "
        + ", ".join(f"`{m}`" for m in spec.lora.target_modules)
    )
    data = recipe.get("data") if isinstance(recipe.get("data"), Mapping) else None
    if data and data.get("datasets"):
        lines.append(
            "- trained on: " + ", ".join(f"`{d}`" for d in data["datasets"]) + f" ({data.get('train_split', 'train')} split)"
        )
    train = recipe.get("train") if isinstance(recipe.get("train"), Mapping) else None
    if train:
        parts = [f"{k} {train[k]}" for k in ("max_steps", "epochs", "batch_size", "lr", "mllm_lr", "precision") if train.get(k) is not None]
        lines.append("- training: " + ", ".join(parts) + (f", seed {recipe['seed']}" if "seed" in recipe else ""))
    if not recipe:
        lines.append("- the recipe was not recorded with this checkpoint")
    return lines


def render_model_card(
    config: "PPCRConfig", evaluations: Sequence[Mapping[str, Any]] = (), *, location: str = "path/to/this/folder"
) -> str:
    """The card's Markdown. ``location`` is what the loading snippet passes (a hub id or a folder)."""
    import yaml

    from ppcr.inference.model_source import looks_like_hub_id

    recipe = config.recipe or {}
    name = str(recipe.get("name") or "ppcr")
    front: dict[str, Any] = {
        "library_name": "ppcr",
        "pipeline_tag": "image-segmentation",
        "tags": ["ppcr", "referring-image-segmentation", "referring-expression-segmentation"],
    }
    if config.base.kind == "reference" and _is_hub_id(config.base.llava):
        front["base_model"] = config.base.llava
    title = location.split("/")[-1] if looks_like_hub_id(location) else f"PPCR: {name}"
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {title}",
        "",
        "A PPCR checkpoint (Progressive Prompt-guided Cross-modal Reasoning) for referring image "
        "segmentation: LLaVA-1.5 with two LoRA adapters (the semantic and the spatial stage) and SAM. "
        "Given an image and a referring expression it returns the mask of the object the expression "
        "describes and the box the spatial stage predicted (SAM's box prompt).",
        "",
        "## Recipe",
        "",
        *_recipe_lines(config),
        "",
        "## Base weights",
        "",
        _base_line("LLaVA", config.base.llava, config.base),
        _base_line("SAM", config.base.sam, config.base),
        "",
        "## Metrics",
        "",
    ]
    if evaluations:
        lines += [
            "Percentages over every sentence of each split (`ppcr eval`); box `gt` gives SAM the "
            "ground-truth box instead of the predicted one (an oracle).",
            "",
            *_metrics_table(evaluations),
        ]
    else:
        lines.append(
            "Not evaluated yet. `ppcr eval --model FOLDER --data-root ROOT --dataset NAME --split SPLIT` "
            "scores it; `save_pretrained(..., metrics=...)` or `push_to_hub(..., metrics=...)` puts the "
            "results here."
        )
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from ppcr import PPCRPredictor",
        "",
        f"predictor = PPCRPredictor.from_pretrained({json.dumps(location)})",
        'predictor.set_image("photo.jpg")                 # encoded once',
        'result = predictor.predict("the red circle on the left")',
        "result.mask, result.box, result.score            # H×W bool, (x1, y1, x2, y2) px, confidence",
        "```",
        "",
        "```bash",
        f'ppcr predict photo.jpg "the red circle on the left" --model {shlex.quote(location)} -o mask.png',
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(
    folder: Path, config: "PPCRConfig", evaluations: Sequence[Mapping[str, Any]], location: str
) -> Path:
    """Write ``folder/README.md`` (``folder`` is a checkpoint being built, so no atomic dance here)."""
    path = Path(folder) / CARD_NAME
    path.write_text(render_model_card(config, evaluations, location=location), encoding="utf-8")
    return path
