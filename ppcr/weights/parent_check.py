"""Is the GLaMM-GranD checkpoint the parent of the GLaMM-RefSeg one? Checked while streaming.

The ``semantic`` adapter is the SVD of RefSeg − GranD on the q/v matrices. That difference is
RefSeg's LoRA only if RefSeg was fine-tuned from exactly this GranD checkpoint; from any other
pair the SVD still returns a plausible adapter, and its reconstruction error does not reveal it.
GLaMM's fine-tuning kept most tensors frozen (:func:`ppcr.weights.glamm_mapping.kept_frozen`: k/o
projections, MLPs, norms, mm_projector, SAM's image and prompt encoders, a vision tower if one is
stored), so a parent and its child hold those bit-identical. :class:`ParentCheck` compares each
frozen tensor of the two checkpoints as they stream past, side by side, and refuses the pair at
the first difference, or when a frozen tensor is stored in only one of them.

"Identical" means equal values: a tensor stored in bf16 on one side and fp32 on the other is
compared exactly after widening both (bf16 → fp32 is lossless). Each tensor waits only until its
partner arrives; with both checkpoints in the same key order (GLaMM's releases are) that is one
tensor, and pickled shards are memory-mapped, so waiting costs no resident memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ppcr.errors import CheckpointError
from ppcr.weights.glamm_mapping import kept_frozen

if TYPE_CHECKING:
    import torch

PARENT, CHILD = 0, 1
_PEFT_PREFIX = "base_model.model."
# Frozen tensors some exports carry and others leave out (the merge script drops the vision
# tower; old transformers saved rotary buffers): compared when both have them, else not required.
_OPTIONAL = ("vision_tower", "rotary_emb.inv_freq")
_HINT = (
    "pass GLaMM-GranD-Pretrained as --base and a model fine-tuned from it (GLaMM-RefSeg) as --semantic: "
    "the semantic adapter is the SVD of their q/v difference"
)


class ParentCheck:
    """Compares the frozen tensors of a parent and a child checkpoint streamed side by side."""

    def __init__(self, parent: str, child: str):
        self.names = (str(parent), str(child))
        self.compared = 0
        self._pending: tuple[dict[str, Any], dict[str, Any]] = ({}, {})

    def watch(
        self, stream: Iterable[tuple[str, torch.Tensor]], side: int
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Pass ``stream`` (GLaMM key names) through unchanged, checking each frozen tensor."""
        for key, tensor in stream:
            self.add(side, key, tensor)
            yield key, tensor
            del tensor

    def add(self, side: int, key: str, tensor: torch.Tensor) -> None:
        """Record one tensor of ``side`` (PARENT or CHILD); compare it once its partner is known."""
        if not kept_frozen(key):
            return
        name = key.removeprefix(_PEFT_PREFIX)
        other = self._pending[1 - side].pop(name, None)
        if other is None:
            if name in self._pending[side]:
                raise CheckpointError(f"{name} appears twice in {self.names[side]}")
            self._pending[side][name] = tensor
            return
        parent, child = (tensor, other) if side == PARENT else (other, tensor)
        difference = _difference(parent, child)
        if difference is not None:
            raise CheckpointError(
                f"{self.names[CHILD]} was not fine-tuned from {self.names[PARENT]}: {name}, which GLaMM's "
                f"fine-tuning keeps frozen, differs ({difference})",
                hint=_HINT,
            )
        self.compared += 1

    def finish(self) -> dict[str, Any]:
        """After both streams ended: refuse a frozen tensor only one side has; return the summary."""
        for side in (PARENT, CHILD):
            alone = sorted(n for n in self._pending[side] if not any(part in n for part in _OPTIONAL))
            if alone:
                more = f" (and {len(alone) - 1} more)" if len(alone) > 1 else ""
                raise CheckpointError(
                    f"{alone[0]}{more} is in {self.names[side]} but not in {self.names[1 - side]}; "
                    "a parent and its fine-tuned child hold the same frozen tensors",
                    hint=_HINT,
                )
        if self.compared == 0:
            raise CheckpointError(
                f"{self.names[PARENT]} and {self.names[CHILD]} share no frozen tensor to compare", hint=_HINT
            )
        self._pending = ({}, {})
        return {"parent": self.names[PARENT], "child": self.names[CHILD], "frozen_tensors_identical": self.compared}


def _difference(parent: torch.Tensor, child: torch.Tensor) -> str | None:
    """None when the two tensors hold the same values; otherwise how they differ, in a few words."""
    import torch

    if parent.shape != child.shape:
        return f"shape {list(parent.shape)} vs {list(child.shape)}"
    if parent.dtype == child.dtype and torch.equal(parent, child):
        return None
    wide = torch.promote_types(parent.dtype, child.dtype)
    a, b = parent.to(wide), child.to(wide)
    if torch.equal(a, b):
        return None
    if not a.is_floating_point():
        return "different values"
    gap = float((a.double() - b.double()).abs().max())
    rounded = torch.equal(a.to(torch.bfloat16), b.to(torch.bfloat16))
    return f"max |difference| {gap:.3g}" + (", within bf16 rounding" if rounded else "")
