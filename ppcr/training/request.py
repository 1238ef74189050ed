"""What a rank is asked to do: the recipe, where to write, and how to build model and data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ppcr.config.schema import Recipe
from ppcr.training.errors import TrainingError


@dataclass
class RunRequest:
    """Everything a rank needs to train; picklable (factories as callables or ``module:attr`` strings)."""

    recipe: Recipe
    out_dir: str
    model_factory: Callable[[Recipe], Any] | str
    dataset_factory: Callable[[Recipe], Any] | str
    collate_fn: Callable[[list[Any]], Any] | str | None = None
    resume: bool = False
    show_progress: bool = False
    on_log: Optional[Callable[[dict[str, Any]], None]] = None
    launcher: str = "in-process"
    extra_env: dict[str, Any] = field(default_factory=dict)


def resolve_callable(value: Callable | str | None) -> Callable | None:
    """A callable given directly or by dotted path (``package.module:attr`` or ``package.module.attr``)."""
    if value is None or callable(value):
        return value
    import importlib

    module_name, sep, attr = value.partition(":")
    if not sep:
        module_name, _, attr = value.rpartition(".")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError) as exc:
        hint = "use 'package.module:attribute'"
        raise TrainingError(f"cannot import {value!r}: {exc}", hint=hint) from None
    if not callable(target):
        raise TrainingError(f"{value!r} is not callable")
    return target
