"""What a rank is asked to do: the recipe, where to write, and what to train.

The task is PPCR unless a caller passes its own factories (the engine's tests train small stand-in
models). Factories are Python callables, never names to import: ``spawn`` ranks receive them
pickled (a module-level function or class by reference), while ranks started by DeepSpeed's
launcher read only data (:func:`ppcr.training.worker.request_to_spec`) and always train PPCR.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ppcr.config.schema import Recipe


@dataclass(frozen=True)
class TrainTask:
    """How to build what a run trains: ``build_model(recipe)`` (see the model contract in
    :mod:`ppcr.training.loop`), ``build_dataset(recipe)`` and the DataLoader's ``collate``."""

    build_model: Callable[[Recipe], Any]
    build_dataset: Callable[[Recipe], Any]
    collate: Optional[Callable[[list[Any]], Any]] = None


@dataclass
class RunRequest:
    """Everything a rank needs to train; picklable. ``task=None`` trains PPCR."""

    recipe: Recipe
    out_dir: str
    task: Optional[TrainTask] = None
    resume: bool = False
    show_progress: bool = False
    on_log: Optional[Callable[[dict[str, Any]], None]] = None
    launcher: str = "in-process"
    extra_env: dict[str, Any] = field(default_factory=dict)

    def resolved_task(self) -> TrainTask:
        """The task to run: the caller's, or PPCR's (imported here, in the rank that trains)."""
        if self.task is not None:
            return self.task
        from ppcr.training.ppcr_task import PPCR_TASK

        return PPCR_TASK
