"""One rank's life: join the group, train, report — and the module DeepSpeed's launcher runs.

Every rank writes ``rank<r>.json`` into a result folder chosen by the launching process:
``{"result": ...}`` (a :class:`TrainResult`), ``{"error": ...}`` (a PPCRError, re-raised as the
same class by the parent) or ``{"crash": traceback}`` (a bug). The file is written before the
exception propagates, so it survives the launcher terminating the other ranks.

``python -m ppcr.training.worker <spec.json>`` is what ``deepspeed --module`` starts on each GPU;
the spec holds the recipe as a plain dict and the factories as ``module:attr`` strings.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from ppcr.errors import PPCRError
from ppcr.io import atomic_save_json
from ppcr.training.errors import error_to_dict
from ppcr.training.request import RunRequest
from ppcr.training.result import TrainResult


def run_rank(request: RunRequest) -> TrainResult:
    """Train as the rank described by this process's environment (RANK, WORLD_SIZE, ...)."""
    from ppcr.training.distributed import init_distributed
    from ppcr.training.loop import Trainer

    trainer = Trainer(request, init_distributed())
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.cleanup()


def run_and_report(request: RunRequest, result_dir: str) -> None:
    """:func:`run_rank`, with its outcome written to ``result_dir/rank<r>.json``."""
    path = Path(result_dir) / f"rank{os.environ.get('RANK', '0')}.json"
    _quiet_library_deprecations()
    try:
        result = run_rank(request)
    except PPCRError as exc:
        write_report(path, {"error": error_to_dict(exc)})
        raise
    except BaseException:
        write_report(path, {"crash": traceback.format_exc()})
        raise
    write_report(path, {"result": result.to_dict()})


def write_report(path: Path, report: dict[str, Any]) -> Path:
    """Write a rank's report atomically, so the parent never reads half of one.

    Only the launching process reads it back (``json.loads`` accepts NaN), and a loss or metric
    that diverged must be reported as it is, not make the report itself fail: NaN is allowed.
    """
    return atomic_save_json(path, report, allow_nan=True, default=str)


def _quiet_library_deprecations() -> None:
    """In a rank process of its own, hide DeepSpeed's use of deprecated torch.distributed calls."""
    import warnings

    for pattern, category in (
        (r".*all_gather_into_tensor.* is deprecated", FutureWarning),
        (r".*script_method.* is deprecated", DeprecationWarning),
    ):
        warnings.filterwarnings("ignore", message=pattern, category=category)


def request_to_spec(request: RunRequest, result_dir: str) -> dict[str, Any]:
    """A JSON-able description of ``request`` for processes started by an external launcher."""
    from ppcr.config.loading import recipe_to_dict

    for role in ("model_factory", "dataset_factory", "collate_fn"):
        value = getattr(request, role)
        if value is not None and not isinstance(value, str):
            raise PPCRError(
                f"{role} must be given as a 'module:attr' string to start ranks with DeepSpeed's launcher",
                hint="pass dotted paths, or use launcher='spawn'",
            )
    return {
        "recipe": recipe_to_dict(request.recipe),
        "out_dir": request.out_dir,
        "model_factory": request.model_factory,
        "dataset_factory": request.dataset_factory,
        "collate_fn": request.collate_fn,
        "resume": request.resume,
        "show_progress": request.show_progress,
        "launcher": request.launcher,
        "extra_env": request.extra_env,
        "result_dir": result_dir,
    }


def request_from_spec(spec: dict[str, Any]) -> tuple[RunRequest, str]:
    from ppcr.config.loading import recipe_from_dict

    request = RunRequest(
        recipe=recipe_from_dict(spec["recipe"]),
        out_dir=spec["out_dir"],
        model_factory=spec["model_factory"],
        dataset_factory=spec["dataset_factory"],
        collate_fn=spec.get("collate_fn"),
        resume=bool(spec.get("resume", False)),
        show_progress=bool(spec.get("show_progress", False)),
        launcher=spec.get("launcher", "deepspeed"),
        extra_env=dict(spec.get("extra_env", {})),
    )
    return request, spec["result_dir"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m ppcr.training.worker <spec.json>`` (one process per rank)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ppcr.training.worker <spec.json>", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    request, result_dir = request_from_spec(spec)
    try:
        run_and_report(request, result_dir)
    except PPCRError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
