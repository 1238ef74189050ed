"""Finding training runs and the evaluations stored in them (for ``ppcr tables``; no torch).

A run directory holds ``recipe.yaml`` (the resolved recipe the trainer saved) and its evaluations
in ``eval*/<dataset>_<split>/metrics.json`` — ``eval/`` for predicted boxes and ``eval-gt/`` for
the oracle, as ``ppcr eval`` writes them by default. What was measured (dataset, split,
box_source) is read from each ``metrics.json`` itself, so renamed folders still count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ppcr.errors import DataError, PPCRError
from ppcr.evaluation.outputs import METRICS_FILE, read_metrics

RECIPE_FILE = "recipe.yaml"
EVAL_DIR = "eval"
EVAL_GT_DIR = "eval-gt"
MAX_DEPTH = 3  # how far below --runs a run directory is looked for
EMBEDDED_RUNS = Path("runs")  # where evaluations of the embedded default model go


def run_dir_of(model_dir: str | Path) -> Optional[Path]:
    """The run a checkpoint belongs to: the model directory itself or its parent (``<run>/final``)
    when that holds ``recipe.yaml``; ``None`` otherwise."""
    model_dir = Path(model_dir)
    for candidate in (model_dir, model_dir.parent):
        if (candidate / RECIPE_FILE).is_file():
            return candidate
    return None


def embedded_run_dir(model_dir: str | Path) -> Optional[Path]:
    """``runs/<name>`` (relative to the working directory) for a model whose own folder is not a
    place to write: the model shipped in the package (``runs/ppcr-shapes-tiny``) or a hub model's
    snapshot in the Hugging Face cache (``.../models--owner--name/snapshots/<commit>`` gives
    ``runs/owner--name``); ``None`` for any other model."""
    from ppcr.inference.model_source import DEFAULT_MODEL

    try:
        resolved = Path(model_dir).resolve()
        if resolved == DEFAULT_MODEL.resolve():
            return EMBEDDED_RUNS / DEFAULT_MODEL.name
    except OSError:
        return None
    repo = resolved.parent.parent.name
    if resolved.parent.name == "snapshots" and repo.startswith("models--") and len(repo) > len("models--"):
        return EMBEDDED_RUNS / repo[len("models--"):]
    return None


def default_eval_dir(model_dir: str | Path, box_source: str = "predicted") -> Path:
    """Where ``ppcr eval`` writes by default: ``<run>/eval`` (``eval-gt`` for the oracle), the run
    being found by :func:`run_dir_of` (``runs/<name>`` for the embedded model); a checkpoint
    outside a run gets ``<model dir>/eval``."""
    base = run_dir_of(model_dir) or embedded_run_dir(model_dir) or Path(model_dir)
    return base / (EVAL_GT_DIR if box_source == "gt" else EVAL_DIR)


def record_embedded_run(run_dir: Path, recipe: Optional[dict]) -> None:
    """Give the embedded model's ``runs/<name>`` the recipe it was trained with (from its
    ``config.json``), so ``ppcr tables --runs runs`` lists its evaluations like any run's."""
    from ppcr.config.loading import recipe_from_dict, save_recipe

    if recipe is None or (run_dir / RECIPE_FILE).is_file():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe_from_dict(recipe), run_dir / RECIPE_FILE)


@dataclass
class RunEvaluation:
    """One ``metrics.json`` of a run."""

    path: Path
    dataset: str
    split: str
    box_source: str
    metrics: dict[str, Any]


@dataclass
class Run:
    """A run directory: its resolved recipe's variant knobs and its evaluations."""

    path: Path
    name: str
    spatial_prompt: str
    spatial_head: str
    evaluations: list[RunEvaluation] = field(default_factory=list)


def _run_dirs(root: Path) -> list[Path]:
    if (root / RECIPE_FILE).is_file():
        return [root]
    found = []
    frontier = [root]
    for _ in range(MAX_DEPTH):
        next_frontier = []
        for folder in frontier:
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir())
            except OSError:
                continue
            for child in children:
                if (child / RECIPE_FILE).is_file():
                    found.append(child)
                else:
                    next_frontier.append(child)
        frontier = next_frontier
    return sorted(found)


def _evaluations(run_dir: Path) -> list[RunEvaluation]:
    results = []
    for path in sorted(run_dir.glob(f"{EVAL_DIR}*/*/{METRICS_FILE}")):
        data = read_metrics(path)
        dataset, split = data.get("dataset"), data.get("split")
        if not isinstance(dataset, str) or not isinstance(split, str):
            raise DataError(f"{path} does not say which dataset and split it measured")
        box_source = data.get("box_source") or "predicted"
        results.append(RunEvaluation(path, dataset, split, str(box_source), data))
    return results


def load_run(run_dir: str | Path, name: Optional[str] = None) -> Run:
    """Read one run directory (its recipe is validated like any recipe)."""
    from ppcr.config.loading import load_recipe

    run_dir = Path(run_dir)
    recipe = load_recipe(run_dir / RECIPE_FILE)
    return Run(
        path=run_dir,
        name=name or run_dir.name,
        spatial_prompt=recipe.model.spatial_prompt,
        spatial_head=recipe.model.spatial_head,
        evaluations=_evaluations(run_dir),
    )


def find_runs(root: str | Path) -> tuple[list[Run], list[str]]:
    """Every run under ``root`` (or ``root`` itself), and a note for each one that was skipped.

    A broken run (invalid recipe, unreadable metrics) is skipped with a note, so one bad folder
    does not hide the others.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"runs folder not found: {root}", hint="pass the folder holding your runs with --runs DIR")
    runs, notes = [], []
    for run_dir in _run_dirs(root):
        name = run_dir.relative_to(root).as_posix() if run_dir != root else run_dir.name
        try:
            runs.append(load_run(run_dir, name))
        except PPCRError as error:
            notes.append(f"skipped run {run_dir}: {error.message}")
    return runs, notes
