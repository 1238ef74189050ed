"""Lazy public names for packages: imported from their module on first use.

Keeps ``import ppcr`` (and so ``ppcr --help``) from importing torch through a package's
``__init__``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_getattr(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` serving ``exports`` (public name → defining module)."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__
