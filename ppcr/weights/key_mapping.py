"""Rename checkpoint keys with an explicit, ordered rule table.

Every source checkpoint (GLaMM, llava-hf, CLIP, SAM) uses its own parameter names. A
:class:`KeyMapping` is a list of :class:`Rule` s tried in order; the first whose regex matches the
*whole* key decides: rename it into a target component, or drop it with a stated reason. A key no
rule matches is *unmapped* and is recorded as such, never silently skipped, so a checkpoint from an
unexpected variant shows up in the conversion report instead of yielding a half-initialised model.

Targets are the in-memory ``state_dict`` names of the module each component is loaded into:

- ``llava``: ``transformers.LlavaForConditionalGeneration`` (transformers 5 layout:
  ``model.language_model.*``, ``model.vision_tower.*``, ``model.multi_modal_projector.linear_{1,2}.*``,
  ``lm_head.weight``);
- ``sam``: segment-anything's ``Sam`` (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``);
- ``semantic_proj``: PPCR's semantic prompt head, an ``nn.Sequential`` Linear-ReLU-Linear whose
  parameters are ``semantic_proj.0.*`` and ``semantic_proj.2.*``.

The rule tables write the transformers 5 names. :meth:`KeyMapping.onto` respells them as the
module actually being filled names its parameters (its own ``state_dict()``), so a name that
differs between transformers versions, such as the ``vision_model.`` level older
``CLIPVisionModel`` s had inside the vision tower, is taken from the skeleton, not assumed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ppcr.errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from ppcr.weights.report import MappingReport

COMPONENTS = ("llava", "sam", "semantic_proj")

# Spellings of one parameter that differ between transformers versions: (pattern, canonical
# replacement). transformers < 5 nests CLIP's modules under ``vision_model.`` in the LLaVA tower.
_SPELLINGS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^model\.vision_tower\.vision_model\."), "model.vision_tower."),
)


def canonical_name(name: str) -> str:
    """``name`` in the spelling the rule tables use (transformers 5)."""
    for pattern, replacement in _SPELLINGS:
        name = pattern.sub(replacement, name)
    return name


@dataclass(frozen=True)
class Rule:
    """One line of a rule table: a full-match regex and where matching keys go.

    ``target`` is an ``re`` replacement template (``\\1`` refers to groups); None drops the key,
    and ``reason`` then says why. For a drop, ``component`` names the part being dropped.
    """

    pattern: str
    target: str | None
    component: str
    reason: str = ""

    def __post_init__(self) -> None:
        if self.target is None and not self.reason:
            raise ValueError(f"drop rule {self.pattern!r} needs a reason")
        if self.target is not None and self.component not in COMPONENTS:
            raise ValueError(f"rule {self.pattern!r} targets unknown component {self.component!r}")


@dataclass(frozen=True)
class MappedKey:
    """The decision for one source key: its target name (None when dropped) and component."""

    source: str
    target: str | None
    component: str
    reason: str = ""

    @property
    def dropped(self) -> bool:
        return self.target is None


@dataclass(frozen=True)
class KeyMapping:
    """An ordered rule table for one checkpoint layout.

    ``anchors`` are full-match regexes that keys of this layout always contain (each must match at
    least one key); they identify the layout before any tensor is read.
    """

    name: str
    rules: tuple[Rule, ...]
    anchors: tuple[str, ...]
    spelled: dict[str, str] | None = field(default=None, repr=False, compare=False)
    _compiled: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", tuple(re.compile(rule.pattern) for rule in self.rules))

    def onto(self, names: Collection[str]) -> KeyMapping:
        """This table with its targets spelled as in ``names`` (the target modules' own
        ``state_dict()`` names) wherever the two spellings are the same parameter."""
        return dataclasses.replace(self, spelled={canonical_name(name): name for name in names})

    def map_key(self, key: str) -> MappedKey | None:
        """Apply the first matching rule; None when no rule matches (an unknown key)."""
        for rule, regex in zip(self.rules, self._compiled):
            match = regex.fullmatch(key)
            if match is None:
                continue
            target = None if rule.target is None else match.expand(rule.target)
            if target is not None and self.spelled is not None:
                target = self.spelled.get(canonical_name(target), target)
            return MappedKey(source=key, target=target, component=rule.component, reason=rule.reason)
        return None

    def matches_layout(self, keys: Iterable[str]) -> bool:
        """True when every anchor matches at least one of ``keys``."""
        keys = list(keys)
        return all(any(re.fullmatch(anchor, key) for key in keys) for anchor in self.anchors)


def check_layout(
    keys: Sequence[str], mapping: KeyMapping, source: str, known: Sequence[KeyMapping] = ()
) -> None:
    """Refuse a checkpoint that is not in ``mapping``'s layout, before any tensor is read.

    The message names the layout the keys do match among ``known``, if any, so that passing a
    llava-hf checkpoint where a GLaMM one is expected says so.
    """
    lora = next((key for key in keys if ".lora_A." in key or ".lora_B." in key), None)
    if lora is not None:
        raise CheckpointError(
            f"{source} holds unmerged LoRA weights ({lora}), not a {mapping.name} checkpoint",
            hint="merge the adapter into the base weights first (peft merge_and_unload)",
        )
    if not keys:
        raise CheckpointError(f"{source} holds no tensors", hint="the checkpoint is empty")
    if mapping.matches_layout(keys):
        return
    other = next((m.name for m in known if m is not mapping and m.matches_layout(keys)), None)
    if other is not None:
        raise CheckpointError(
            f"{source} is a {other} checkpoint, not a {mapping.name} checkpoint",
            hint=f"pass it as the {other} source instead",
        )
    raise CheckpointError(
        f"{source} does not look like a {mapping.name} checkpoint (first key: {sorted(keys)[0]})",
        hint=f"expected keys matching {', '.join(mapping.anchors)}",
    )


def decide(
    mapping: KeyMapping, key: str, source: str, take: Callable[[MappedKey], bool] | None = None
) -> MappedKey | None:
    """``mapping.map_key(key)``, with a mapped key that ``take`` refuses turned into a drop.

    ``take`` selects which mapped keys a source provides when several sources cover the same
    targets (e.g. the mask decoder from GLaMM-RefSeg, everything else from GLaMM-GranD).
    """
    decision = mapping.map_key(key)
    if decision is None or decision.dropped or take is None or take(decision):
        return decision
    reason = f"not taken from {source} (would be {decision.target})"
    return MappedKey(source=key, target=None, component=decision.component, reason=reason)


def map_tensors(
    stream: Iterable[tuple[str, torch.Tensor]],
    mapping: KeyMapping,
    report: MappingReport,
    source: str,
    take: Callable[[MappedKey], bool] | None = None,
) -> Iterator[tuple[MappedKey, torch.Tensor]]:
    """Rename a tensor stream: yield ``(MappedKey, tensor)`` for kept keys, record every key.

    Dropped, not-taken (see :func:`decide`) and unmapped keys are recorded in ``report`` and not
    yielded. The tensor object is passed through untouched (same storage, same dtype).
    """
    for key, tensor in stream:
        decision = decide(mapping, key, source, take)
        report.record(source, key, decision, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
        if decision is not None and not decision.dropped:
            yield decision, tensor
        del tensor
