"""Recover a LoRA adapter from two merged checkpoints by truncated SVD of their difference.

GLaMM-RefSeg was LoRA-tuned (r=8, alpha=16, on the LLM's q_proj/v_proj) from GLaMM-GranD-Pretrained
and released merged, so on each of those matrices ``W_refseg - W_grand = (alpha/r)·B·A`` has rank
at most 8 up to bf16 rounding. PPCR's ``semantic`` adapter is that delta, re-factored:
the top-``r`` singular triplets of the difference, with the singular values split evenly between
the two factors (``B = U·sqrt(S/s)``, ``A = sqrt(S/s)·Vᵀ``, ``s = alpha/r``) so A and B have the
same scale, as LoRA training would give them.

Every matrix gets an :class:`SvdReport` with the *measured* relative reconstruction error
``‖Δ − s·B·A‖_F / ‖Δ‖_F`` (computed from the returned float32 factors) and the fraction of
``‖Δ‖²`` the kept singular values capture, so a pair of checkpoints that are not LoRA-related
shows up as a large error rather than as a plausible-looking adapter.

GLaMM's checkpoints are bf16, so the stored difference is the true rank-8 delta plus rounding
noise of up to half a bf16 ulp of each weight. The reported error then measures that noise (it is
relative to the *stored* difference), while ``s·B·A`` is closer to the true delta than the stored
difference itself: truncating to rank ``r`` discards most of the noise (tested).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from ppcr.errors import CheckpointError

if TYPE_CHECKING:
    import torch

Method = Literal["auto", "exact", "lowrank"]

LORA_TARGET_REGEX = r".*language_model.*\.(q_proj|v_proj)"
EXACT_UP_TO = 1024  # "auto" uses a full SVD up to this many rows/columns, randomized beyond
# Above this median relative error the adapter misses more than half of a typical matrix's
# difference: the two checkpoints are not a rank-r LoRA apart (another rank, or not a LoRA).
UNTRUSTED_MEDIAN_ERROR = 0.5
_OVERSAMPLE = 16
_POWER_ITERATIONS = 6


@dataclass(frozen=True)
class SvdReport:
    """How well a rank-``rank`` factorisation reproduces one weight difference."""

    module: str
    shape: tuple[int, int]
    rank: int
    relative_error: float
    energy: float
    delta_norm: float
    method: str

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape"] = list(self.shape)
        return out


def extract_lora(
    w_tuned: torch.Tensor,
    w_base: torch.Tensor,
    rank: int,
    *,
    alpha: float | None = None,
    method: Method = "auto",
    device: str | torch.device | None = None,
    module: str = "",
) -> tuple[torch.Tensor, torch.Tensor, SvdReport]:
    """Factor ``w_tuned - w_base`` as ``(alpha/rank)·B @ A`` with ``A: [rank, in]``, ``B: [out, rank]``.

    ``alpha`` defaults to ``rank`` (scale 1). ``method``: ``exact`` is a float64 full SVD;
    ``lowrank`` a float64 randomized SVD (fixed seed, 6 power iterations),
    far faster on 4096×4096 matrices; ``auto`` picks exact up to 1024 rows/columns. ``device``
    (e.g. ``"cuda"``) runs the decomposition there; A and B come back on the CPU in float32.
    """
    import torch

    if method not in ("auto", "exact", "lowrank"):
        raise ValueError(f"unknown SVD method {method!r}")
    if w_tuned.shape != w_base.shape or w_tuned.dim() != 2:
        raise CheckpointError(
            f"{module or 'matrix'}: tuned shape {list(w_tuned.shape)} and base shape "
            f"{list(w_base.shape)} differ (or are not matrices)",
            hint="the two checkpoints are not the same architecture",
        )
    rows, cols = w_tuned.shape
    if not 1 <= rank <= min(rows, cols):
        limit = min(rows, cols)
        raise CheckpointError(f"LoRA rank {rank} must be between 1 and {limit} for {module or 'matrix'}")
    scale = (rank if alpha is None else alpha) / rank
    if scale <= 0:
        raise CheckpointError(f"LoRA alpha must be positive, got {alpha}")
    work = torch.device(device) if device is not None else w_tuned.device
    delta = w_tuned.to(work, torch.float64) - w_base.to(work, torch.float64)
    if not torch.isfinite(delta).all():
        raise CheckpointError(f"{module or 'matrix'}: the weights contain NaN or infinite values")
    delta_norm = float(torch.linalg.matrix_norm(delta))

    chosen = ("exact" if min(rows, cols) <= EXACT_UP_TO else "lowrank") if method == "auto" else method
    if delta_norm == 0.0:
        u = torch.zeros(rows, rank, dtype=torch.float64, device=work)
        s = torch.zeros(rank, dtype=torch.float64, device=work)
        vh = torch.zeros(rank, cols, dtype=torch.float64, device=work)
    elif chosen == "exact":
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    else:
        u, s, vh = _lowrank_svd(delta, rank)

    root = torch.sqrt(s / scale)
    lora_b = (u * root).to("cpu", torch.float32).contiguous()
    lora_a = (root[:, None] * vh).to("cpu", torch.float32).contiguous()

    if delta_norm == 0.0:
        relative_error, energy = 0.0, 1.0
    else:
        rebuilt = scale * (lora_b.to(work, torch.float64) @ lora_a.to(work, torch.float64))
        relative_error = float(torch.linalg.matrix_norm(delta - rebuilt)) / delta_norm
        energy = min(1.0, float((s**2).sum()) / delta_norm**2)
    report = SvdReport(
        module=module,
        shape=(rows, cols),
        rank=rank,
        relative_error=relative_error,
        energy=energy,
        delta_norm=delta_norm,
        method=chosen,
    )
    return lora_a, lora_b, report


def _lowrank_svd(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``rank`` SVD by randomized subspace iteration (Halko et al.), with its own seeded generator
    so results are reproducible and the global RNG is untouched."""
    import torch

    rows, cols = delta.shape
    width = min(rank + _OVERSAMPLE, rows, cols)
    generator = torch.Generator(device=delta.device).manual_seed(0)
    probe = torch.randn(cols, width, generator=generator, dtype=delta.dtype, device=delta.device)
    basis = torch.linalg.qr(delta @ probe).Q
    for _ in range(_POWER_ITERATIONS):  # re-orthonormalised power iterations sharpen the spectrum
        basis = torch.linalg.qr(delta @ torch.linalg.qr(delta.T @ basis).Q).Q
    u_small, s, vh = torch.linalg.svd(basis.T @ delta, full_matrices=False)
    return (basis @ u_small)[:, :rank], s[:rank], vh[:rank]


def adapter_key(module: str, factor: Literal["A", "B"]) -> str:
    """The key peft's ``save_pretrained`` writes for one LoRA factor of ``module``."""
    return f"base_model.model.{module}.lora_{factor}.weight"


def language_model_qv_modules(num_layers: int) -> list[str]:
    """PPCR's LoRA target modules in ``LlavaForConditionalGeneration``: each LLM layer's q_proj and v_proj."""
    return [
        f"model.language_model.layers.{layer}.self_attn.{proj}"
        for layer in range(num_layers)
        for proj in ("q_proj", "v_proj")
    ]


def extract_adapter(
    tuned: Iterable[tuple[str, torch.Tensor]],
    base: Iterable[tuple[str, torch.Tensor]],
    module_names: Sequence[str],
    rank: int,
    alpha: float,
    *,
    method: Method = "auto",
    device: str | torch.device | None = None,
) -> tuple[dict[str, torch.Tensor], list[SvdReport]]:
    """Extract a peft-layout LoRA state dict for ``module_names`` from two tensor streams.

    ``tuned`` and ``base`` yield ``(name, tensor)`` with names in the target layout
    (``<module>.weight``), e.g. the renamed output of :func:`ppcr.weights.key_mapping.map_tensors`.
    They are consumed alternately, one item at a time, and only weights of the requested modules
    are held until their partner arrives, so with both checkpoints in the same order only a few
    matrices are alive at once. Returns ``{base_model.model.<module>.lora_{A,B}.weight: tensor}``
    (peft's on-disk names) and one report per module, in ``module_names`` order.
    """
    wanted = {f"{name}.weight": name for name in module_names}
    pending: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    done: dict[str, tuple[Any, Any, SvdReport]] = {}
    for side, key, tensor in _alternate(iter(tuned), iter(base)):
        module = wanted.get(key)
        if module is None:
            continue
        if module in done or key in pending[side]:
            raise CheckpointError(f"{key} appears twice in the {('tuned', 'base')[side]} checkpoint")
        other = pending[1 - side].pop(key, None)
        if other is None:
            pending[side][key] = tensor
            continue
        w_tuned, w_base = (tensor, other) if side == 0 else (other, tensor)
        done[module] = extract_lora(
            w_tuned, w_base, rank, alpha=alpha, method=method, device=device, module=module
        )
        del tensor, other, w_tuned, w_base
    absent = [m for m in module_names if m not in done]
    if absent:
        side = "tuned" if f"{absent[0]}.weight" not in pending[0] else "base"
        more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
        raise CheckpointError(
            f"{absent[0]}.weight{more} is missing from the {side} checkpoint",
            hint="both checkpoints must contain every LoRA target matrix",
        )
    state: dict[str, torch.Tensor] = {}
    reports: list[SvdReport] = []
    for module in module_names:
        lora_a, lora_b, report = done.pop(module)
        state[adapter_key(module, "A")] = lora_a
        state[adapter_key(module, "B")] = lora_b
        reports.append(report)
    return state, reports


def _alternate(
    first: Iterator[tuple[str, torch.Tensor]], second: Iterator[tuple[str, torch.Tensor]]
) -> Iterator[tuple[int, str, torch.Tensor]]:
    """Interleave two streams item by item, tagging each item with its side (0 or 1)."""
    streams = [first, second]
    live = [True, True]
    while any(live):
        for side in (0, 1):
            if not live[side]:
                continue
            item = next(streams[side], None)
            if item is None:
                live[side] = False
                continue
            yield side, item[0], item[1]
            del item


def summarize(reports: Sequence[SvdReport]) -> dict[str, Any]:
    """Worst (and which matrix), median and mean relative error, lowest and median captured energy."""
    if not reports:
        return {"matrices": 0}
    errors = [r.relative_error for r in reports]
    worst = max(reports, key=lambda r: r.relative_error)
    return {
        "matrices": len(reports),
        "max_relative_error": worst.relative_error,
        "worst_module": worst.module,
        "median_relative_error": statistics.median(errors),
        "mean_relative_error": math.fsum(errors) / len(errors),
        "min_energy": min(r.energy for r in reports),
        "median_energy": statistics.median(r.energy for r in reports),
    }


def untrusted_warning(name: str, reports: Sequence[SvdReport]) -> str | None:
    """A one-line warning when the median relative error exceeds :data:`UNTRUSTED_MEDIAN_ERROR`."""
    summary = summarize(reports)
    if not summary["matrices"] or summary["median_relative_error"] <= UNTRUSTED_MEDIAN_ERROR:
        return None
    return (
        f"WARNING: the {name} adapter's median relative error is {summary['median_relative_error']:.2f} "
        f"(> {UNTRUSTED_MEDIAN_ERROR}; median captured energy {summary['median_energy']:.2f}): the two "
        f"checkpoints are not a rank-{reports[0].rank} LoRA apart, so the adapter reproduces the tuned "
        "model poorly; per-matrix errors are in conversion_report.json"
    )
