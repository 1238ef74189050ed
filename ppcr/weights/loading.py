"""Copy a renamed tensor stream into already built modules, one tensor at a time.

Loading by streaming keeps peak memory at the model plus one shard (``load_state_dict`` would
first need the whole converted state dict as a second copy). Each tensor goes to the module of its
component (``llava``, ``sam``, ``semantic_proj``) under its target name, which must be one of that
module's own ``state_dict`` names; an unknown name or a shape mismatch is a
:class:`~ppcr.errors.CheckpointError`, never skipped. Modules must be materialised (not on the
``meta`` device): values are copied into existing storage, converted to its dtype and device.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from ppcr.errors import CheckpointError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ppcr.weights.key_mapping import MappedKey


def copy_components(
    modules: Mapping[str, nn.Module], stream: Iterable[tuple[MappedKey, torch.Tensor]]
) -> dict[str, set[str]]:
    """Copy each mapped tensor into ``modules[component]``; return the names filled per component."""
    import torch

    slots: dict[str, dict[str, torch.Tensor]] = {}
    filled: dict[str, set[str]] = {}
    for decision, tensor in stream:
        component, name = decision.component, decision.target
        if component not in modules:
            raise CheckpointError(f"no module was given for component {component!r} ({name})")
        if component not in slots:
            slots[component] = modules[component].state_dict(keep_vars=True)
        slot = slots[component].get(name)
        if slot is None:
            raise CheckpointError(
                f"the {component} module has no parameter {name}",
                hint="the checkpoint and the model configuration disagree",
            )
        if tuple(slot.shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{name}: the checkpoint has shape {list(tensor.shape)}, the {component} module expects "
                f"{list(slot.shape)}",
                hint="the model configuration does not match the checkpoint (sizes, vocabulary)",
            )
        with torch.no_grad():
            slot.copy_(tensor)
        filled.setdefault(component, set()).add(name)
        del tensor
    return filled
