"""Training failures, and how a rank's failure travels back to the process that launched it.

Ranks run in child processes (``torch.multiprocessing`` spawn or DeepSpeed's launcher); a
:class:`~ppcr.errors.PPCRError` raised there is written to a small JSON file and re-raised in
the parent as the same class with the same message and hint, so the CLI shows one clean line
whatever the process layout.
"""

from __future__ import annotations

import importlib
from typing import Any

from ppcr.errors import PPCRError


class TrainingError(PPCRError):
    """Training cannot start or cannot continue (bad run directory, resume mismatch...)."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; the run stopped before the bad step touched the weights."""


class NonFiniteWeightsError(TrainingError):
    """An update left NaN or infinite weights (the loss before it was finite); the run stopped
    without saving them, so the last saved checkpoint and training state stay good."""


def error_to_dict(exc: PPCRError) -> dict[str, Any]:
    cls = type(exc)
    return {"module": cls.__module__, "type": cls.__qualname__, "message": exc.message, "hint": exc.hint}


def error_from_dict(data: dict[str, Any]) -> PPCRError:
    """Rebuild a PPCRError reported by a rank; an unknown class becomes a plain PPCRError."""
    message, hint = str(data.get("message", "")), data.get("hint")
    cls: Any = PPCRError
    module_name, type_name = str(data.get("module", "")), str(data.get("type", ""))
    if module_name.startswith("ppcr") and type_name.isidentifier():
        try:
            found = getattr(importlib.import_module(module_name), type_name, None)
        except ImportError:
            found = None
        if isinstance(found, type) and issubclass(found, PPCRError):
            cls = found
    try:
        return cls(message, hint=hint)
    except TypeError:
        return PPCRError(message, hint=hint)
