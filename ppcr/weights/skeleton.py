"""Build a model's module tree without initialising its weights, then give it empty storage.

Converting a 7B checkpoint into freshly built modules would otherwise initialise every parameter
at random first (minutes of CPU for LLaVA-7B, all of it overwritten a moment later). Here the
modules are constructed with their *parameters* on the ``meta`` device (no memory, no init
compute) while *buffers* are created normally, because non-persistent buffers (rotary
frequencies, CLIP position ids, SAM's pixel mean/std) are computed in the constructors and no
checkpoint carries them. :func:`materialize` then allocates uninitialised CPU storage for each
parameter, in the dtype the conversion keeps. Every parameter must afterwards be filled from a
checkpoint: the assembly refuses to run when one would come from no source, so no
uninitialised value survives a successful conversion.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside this block get their parameters on ``meta``; buffers stay real."""
    from accelerate import init_empty_weights  # a dependency of peft

    with init_empty_weights(include_buffers=False):
        yield


def materialize(module: nn.Module, dtype: torch.dtype, device: str | torch.device = "cpu") -> nn.Module:
    """Give every ``meta`` parameter of ``module`` uninitialised storage of ``dtype`` (in place).

    Parameters shared between modules stay shared; ``requires_grad`` is kept; buffers and
    already materialised parameters are left untouched.
    """
    import torch
    from torch import nn

    made: dict[int, nn.Parameter] = {}
    for sub in module.modules():
        for name, parameter in list(sub._parameters.items()):
            if parameter is None or not parameter.is_meta:
                continue
            replacement = made.get(id(parameter))
            if replacement is None:
                storage = torch.empty(parameter.shape, dtype=dtype, device=device)
                replacement = nn.Parameter(storage, requires_grad=parameter.requires_grad)
                made[id(parameter)] = replacement
            sub._parameters[name] = replacement
    return module
