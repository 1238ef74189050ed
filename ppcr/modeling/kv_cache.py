"""The KV-cache keyword of a transformers decoder's forward, whatever the installed version.

transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name now warns and goes in
5.40, in arguments and in outputs). PPCR supports ``transformers>=5,<6``, so the name is read
from the model's signature rather than assumed.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=None)
def cache_keyword(model_class: type) -> str:
    """``"cache"`` if ``model_class.forward`` takes it, else the older ``"past_key_values"``."""
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def returned_cache(output: Any) -> Any:
    """The cache that a forward with ``use_cache=True`` returned (``cache`` or ``past_key_values``)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
