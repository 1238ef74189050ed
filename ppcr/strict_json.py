"""JSON that other tools can read: no ``NaN`` / ``Infinity`` (Python's ``json`` writes them by
default, but they are not JSON and ``jq``, JavaScript and most parsers reject the whole document).

A model whose weights went bad predicts NaN boxes; what we print for it must still parse, with
``null`` where the number was and a warning (the caller's job) saying so.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any


def without_non_finite(value: Any, where: str = "") -> tuple[Any, list[str]]:
    """``value`` with every non-finite float replaced by ``None``, and where they were
    (``"predictions[0].box[2]"``). Dicts, lists and tuples are walked (tuples become lists);
    anything else is returned as it is."""
    found: list[str] = []
    return _clean(value, where, found), found


def _clean(value: Any, where: str, found: list[str]) -> Any:
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):  # float, numpy floats
        if math.isfinite(value):
            return value
        found.append(where)
        return None
    if isinstance(value, dict):
        return {key: _clean(item, f"{where}.{key}" if where else str(key), found) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(item, f"{where}[{index}]", found) for index, item in enumerate(value)]
    return value


def strict_json_dumps(value: Any, **options: Any) -> str:
    """:func:`json.dumps` that refuses NaN and infinities (``ValueError``) instead of writing
    invalid JSON; clean the value with :func:`without_non_finite` first where they can occur."""
    return json.dumps(value, allow_nan=False, **options)
