"""``ppcr.train`` and ``ppcr.evaluate``: the two jobs of the command line as plain functions.

They are thin: ``train`` is what ``ppcr train`` runs (:func:`ppcr.training.run.train`)
and ``evaluate`` what ``ppcr eval`` runs for one split (:func:`ppcr.evaluation.evaluate.evaluate`),
with the conveniences a notebook wants: a recipe by name with overrides, a model by folder, hub id
or the embedded default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:  # pragma: no cover
    from ppcr.config.schema import BoxSource, Launcher, Recipe
    from ppcr.evaluation.evaluate import EvalResult, PredictionHook, ProgressFn
    from ppcr.inference.predictor import PPCRPredictor
    from ppcr.modeling.model import PPCRModel
    from ppcr.training.result import TrainResult

PathLike = Union[str, "os.PathLike[str]"]


def train(
    recipe: Union["Recipe", PathLike],
    out_dir: PathLike,
    *,
    overrides: Iterable[str] = (),
    resume: bool = False,
    nproc: int = 1,
    launcher: "Launcher" = "auto",
    progress: Optional[bool] = None,
    on_log: Optional[Callable[[dict[str, Any]], None]] = None,
) -> "TrainResult":
    """Train PPCR as ``recipe`` says into the run folder ``out_dir``; the model ends in ``out_dir/final``.

    ``recipe``: a :class:`~ppcr.config.schema.Recipe`, a shipped recipe's name (``"shapes"``) or a
    YAML path; ``overrides`` (``"train.lr=1e-4"``, ``"spatial-head=attn"`` …) apply to a name or
    path only. ``resume`` continues an interrupted run; ``nproc`` processes (``launcher``: spawn on
    CPU, DeepSpeed on GPU by default); ``progress`` shows a bar (default: on a terminal);
    ``on_log(row)`` sees every logged metrics row.
    """
    from ppcr.config.schema import Recipe
    from ppcr.errors import PPCRError
    from ppcr.training.run import train as train_run

    overrides = list(overrides)
    if isinstance(recipe, Recipe):
        if overrides:
            raise PPCRError(
                "overrides apply to a recipe name or path, not to a Recipe object",
                hint="load it with load_recipe(name, overrides) or pass the name",
            )
        resolved = recipe
    else:
        from ppcr.config.loading import load_recipe

        resolved = load_recipe(recipe, overrides)
    return train_run(
        resolved, out_dir, resume=resume, nproc=nproc, launcher=launcher, progress=progress, on_log=on_log
    )


def evaluate(
    model: Union["PPCRModel", "PPCRPredictor", PathLike, None],
    dataset: str,
    split: str,
    data_root: PathLike,
    *,
    images: Optional[PathLike] = None,
    box_source: "BoxSource" = "predicted",
    out_dir: Optional[PathLike] = None,
    save_vis: int = 0,
    batch_size: int = 16,
    naive: bool = False,
    device: str = "auto",
    dtype: str = "fp32",
    progress: Optional["ProgressFn"] = None,
    on_prediction: Optional["PredictionHook"] = None,
) -> "EvalResult":
    """Score ``model`` on every sentence of ``dataset``/``split`` (e.g. ``"refcoco"``, ``"val"``).

    ``model``: a loaded :class:`~ppcr.modeling.model.PPCRModel` or predictor, or a checkpoint
    folder / hub id / ``None`` (the embedded default), loaded on ``device`` in ``dtype``.
    ``data_root`` holds the refer layout (``ppcr prepare``); ``images`` overrides its image folder.
    ``box_source="gt"`` gives SAM the ground-truth box (the oracle of Table 3). With ``out_dir``,
    ``metrics.json``, ``per_sentence.csv`` and ``save_vis`` panels go to
    ``out_dir/<dataset>_<split>/``. The result's ``metrics`` holds oIoU, mIoU and P@0.5…0.9 (%).
    """
    from ppcr.evaluation.evaluate import evaluate as evaluate_split
    from ppcr.inference.predictor import PPCRPredictor
    from ppcr.modeling.model import PPCRModel

    model_name: Optional[str] = None
    if isinstance(model, PPCRPredictor):
        loaded = model.model
    elif isinstance(model, PPCRModel):
        loaded = model
    else:
        from ppcr.inference.model_source import resolve_model_dir

        directory = resolve_model_dir(model)
        model_name = str(directory)
        loaded = PPCRPredictor.from_pretrained(directory, device=device, dtype=dtype).model
    return evaluate_split(
        loaded,
        dataset,
        split,
        data_root,
        images=images,
        box_source=box_source,
        out_dir=out_dir,
        save_vis=save_vis,
        batch_size=batch_size,
        naive=naive,
        progress=progress,
        model_name=model_name,
        on_prediction=on_prediction,
    )


__all__ = ["evaluate", "train"]
