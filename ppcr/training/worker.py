"""One rank's life: join the group, train, report — and the module DeepSpeed's launcher runs.

Every rank writes ``rank<r>.json`` into a result folder chosen by the launching process
(:mod:`ppcr.training.launch`): its :class:`TrainResult`, or the error that stopped it.

``python -m ppcr.training.worker <spec.json>`` is what ``deepspeed --module`` starts on each GPU;
the spec is data only (the recipe as a plain dict, the run folder, flags), and those ranks train
PPCR: no code travels through it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ppcr.errors import PPCRError
from ppcr.training.launch import report_outcome
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
    _quiet_library_deprecations()
    report_outcome(result_dir, lambda: run_rank(request).to_dict())


def _quiet_library_deprecations() -> None:
    """In a rank process of its own, hide DeepSpeed's use of deprecated torch.distributed calls."""
    import warnings

    for pattern, category in (
        (r".*all_gather_into_tensor.* is deprecated", FutureWarning),
        (r".*script_method.* is deprecated", DeprecationWarning),
    ):
        warnings.filterwarnings("ignore", message=pattern, category=category)


def request_to_spec(request: RunRequest, result_dir: str) -> dict[str, Any]:
    """A JSON-able description of a PPCR ``request`` for processes started by an external launcher."""
    from ppcr.config.loading import recipe_to_dict

    if request.task is not None or request.on_log is not None:
        raise PPCRError(
            "ranks started by DeepSpeed's launcher receive data only: they train PPCR, with no on_log",
            hint="use launcher='spawn' for other models or an on_log callback",
        )
    return {
        "recipe": recipe_to_dict(request.recipe),
        "out_dir": request.out_dir,
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
