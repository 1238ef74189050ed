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

    def table(self) -> list[dict[str, Any]]:
        """Counts per (source, component): mapped, dropped (with the distinct reasons) and unmapped keys.

        Missing targets belong to no source; they are listed under source ``-`` by component.
        """
        rows: dict[tuple[str, str], dict[str, Any]] = {}

        def row(source: str, component: str) -> dict[str, Any]:
            key = (source, component)
            if key not in rows:
                rows[key] = {"source": source, "component": component, "mapped": 0, "dropped": 0,
                             "unmapped": 0, "missing": 0, "reasons": []}
            return rows[key]

        for record in self.mapped.values():
            row(record.source, record.component)["mapped"] += 1
        for record in self.dropped:
            entry = row(record.source, record.component)
            entry["dropped"] += 1
            reason = record.reason.split(" (would be ")[0]
            if reason not in entry["reasons"]:
                entry["reasons"].append(reason)
        for record in self.unmapped:
            row(record.source, record.component)["unmapped"] += 1
        for name in self.missing:
            row("-", target_component(name))["missing"] += 1
        sources = list(dict.fromkeys(source for source, _ in rows))  # in the order they were read
        return [rows[key] for key in sorted(rows, key=lambda k: (sources.index(k[0]), k[1]))]

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts(),
            "table": self.table(),
            "mapped": {t: f"{r.source}:{r.key}" for t, r in sorted(self.mapped.items())},
            "dropped": [
                {"source": r.source, "key": r.key, "component": r.component, "reason": r.reason}
                for r in self.dropped
            ],
            "unmapped": [{"source": r.source, "key": r.key, "shape": list(r.shape)} for r in self.unmapped],
            "missing": list(self.missing),
        }


def target_component(name: str) -> str:
    """The component a target name belongs to (for reporting targets no source provided)."""
    if name.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder.")):
        return "sam"
    if name.startswith("semantic_proj."):
        return "semantic_proj"
    return "llava"


@dataclass
class ConversionReport:
    """The whole record of one ``ppcr prepare weights`` run, saved as ``conversion_report.json``.

    ``notes`` are the decisions a reader must know about (prompt format, what was left fresh,
    arguments that were not used), one sentence each. ``parent_check``: for ``--from glamm``, how
    many frozen tensors were found identical in GranD and RefSeg
    (:mod:`ppcr.weights.parent_check`); None otherwise.
    """

    mapping: MappingReport
    tokens: TokenRowRemap | None = None
    adapters: dict[str, list[SvdReport]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    parent_check: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sources": dict(self.sources),
            "notes": list(self.notes),
            "mapping": self.mapping.to_dict(),
        }
        if self.tokens is not None:
            out["tokens"] = self.tokens.to_dict()
        out["adapters"] = self.adapters_dict()
        if self.parent_check is not None:
            out["parent_check"] = dict(self.parent_check)
        return out

    def adapters_dict(self) -> dict[str, Any]:
        """Per extracted adapter: the summary and, per matrix, the relative error and captured energy."""
        from ppcr.weights.lora_svd import summarize

        return {
            name: {**summarize(reports), "per_matrix": [r.to_dict() for r in reports]}
            for name, reports in self.adapters.items()
        }

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON atomically."""
        from ppcr.io import atomic_save_json

        return atomic_save_json(path, self.to_dict())
