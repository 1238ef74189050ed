"""The randomly initialised tiny PPCR recipe that the model tests build (no weights, no data)."""

from __future__ import annotations

from ppcr.config.schema import InitSpec, LoraSpec, ModelSpec, Recipe, TinySpec


def tiny_recipe(*, seed: int = 3, init: InitSpec | None = None, tiny: dict | None = None, **model) -> Recipe:
    """``model`` overrides ModelSpec fields, ``tiny`` TinySpec fields; ``init`` defaults to random."""
    fields = {"size": "tiny", "sam": "tiny", "lora": LoraSpec(dropout=0.0), "max_length": 96, **model}
    if tiny is not None:
        fields["tiny"] = TinySpec(**tiny)
    return Recipe(seed=seed, model=ModelSpec(**fields), init=init or InitSpec(source="random", sam_checkpoint=None))
