"""What a weight conversion did with every key, kept so that nothing is silently ignored.

:class:`MappingReport` records each source key as mapped (with its target), dropped (with the
reason), or unmapped (no rule knew it), and, once the expected target names are known, which
expected targets no source provided (missing). :class:`ConversionReport` adds the token-row and
LoRA-extraction results and is written next to the converted checkpoint as JSON.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ppcr.errors import CheckpointError

if TYPE_CHECKING:
    from ppcr.weights.key_mapping import MappedKey
    from ppcr.weights.lora_svd import SvdReport
    from ppcr.weights.token_rows import TokenRowRemap

UNKNOWN = "unknown"


@dataclass(frozen=True)
class KeyRecord:
    """One source key: where it came from, what happened to it, and its shape and dtype."""

    source: str
    key: str
    target: str | None
    component: str
    reason: str
    shape: tuple[int, ...]
    dtype: str


@dataclass
class MappingReport:
    """Every key seen during a conversion, by outcome (possibly from several source checkpoints)."""

    mapped: dict[str, KeyRecord] = field(default_factory=dict)
    dropped: list[KeyRecord] = field(default_factory=list)
    unmapped: list[KeyRecord] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def record(
        self, source: str, key: str, decision: MappedKey | None, shape: tuple[int, ...] = (), dtype: str = ""
    ) -> None:
        """File one key under mapped, dropped or unmapped; two sources for one target is an error."""
        if decision is None:
            reason = "no rule matches this key"
            self.unmapped.append(KeyRecord(source, key, None, UNKNOWN, reason, shape, dtype))
            return
        entry = KeyRecord(source, key, decision.target, decision.component, decision.reason, shape, dtype)
        if decision.target is None:
            self.dropped.append(entry)
            return
        previous = self.mapped.get(decision.target)
        if previous is not None:
            raise CheckpointError(
                f"{decision.target} is provided twice: by {previous.source}:{previous.key} "
                f"and by {source}:{key}",
                hint="pass each part of the model from one source only",
            )
        self.mapped[decision.target] = entry

    def targets(self, component: str | None = None) -> set[str]:
        """Target names mapped so far (of one component, or all)."""
        return {t for t, r in self.mapped.items() if component is None or r.component == component}

    def expect(self, targets: Iterable[str]) -> list[str]:
        """Record which of the expected target names no source provided; return them sorted."""
        self.missing = sorted(set(targets) - set(self.mapped))
        return self.missing

    def problems(self) -> list[str]:
        """One line per unmapped or missing key: what the caller must look at before trusting the result."""
        lines = [f"unmapped {r.source}:{r.key} {list(r.shape)}" for r in self.unmapped]
        lines += [f"missing {name}" for name in self.missing]
        return lines

    def counts(self) -> dict[str, Any]:
        """Counts per outcome, with mapped and dropped keys broken down by component."""
        return {
            "mapped": len(self.mapped),
            "mapped_by_component": dict(Counter(r.component for r in self.mapped.values())),
            "dropped": len(self.dropped),
            "dropped_by_component": dict(Counter(r.component for r in self.dropped)),
            "unmapped": len(self.unmapped),
            "missing": len(self.missing),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts(),
            "mapped": {t: f"{r.source}:{r.key}" for t, r in sorted(self.mapped.items())},
            "dropped": [
                {"source": r.source, "key": r.key, "component": r.component, "reason": r.reason}
                for r in self.dropped
            ],
            "unmapped": [{"source": r.source, "key": r.key, "shape": list(r.shape)} for r in self.unmapped],
            "missing": list(self.missing),
        }


@dataclass
class ConversionReport:
    """The whole record of one ``ppcr prepare weights`` run, saved as ``conversion_report.json``."""

    mapping: MappingReport
    tokens: TokenRowRemap | None = None
    adapters: dict[str, list[SvdReport]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from ppcr.weights.lora_svd import summarize

        out: dict[str, Any] = {"sources": dict(self.sources), "mapping": self.mapping.to_dict()}
        if self.tokens is not None:
            out["tokens"] = self.tokens.to_dict()
        out["adapters"] = {
            name: {**summarize(reports), "per_matrix": [r.to_dict() for r in reports]}
            for name, reports in self.adapters.items()
        }
        return out

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON atomically."""
        from ppcr.io import atomic_save_json

        return atomic_save_json(path, self.to_dict())
