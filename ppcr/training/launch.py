"""Start N rank processes and bring rank 0's answer back: the ``--nproc`` launch path shared by
training (:mod:`ppcr.training.run`) and evaluation (:mod:`ppcr.evaluation.processes`).

Every rank runs its work inside :func:`report_outcome`, which writes ``rank<r>.json`` into a
result folder chosen by the launching process: ``{"result": ...}`` (plain JSON data),
``{"error": ...}`` (a PPCRError, re-raised as the same class by the parent) or
``{"crash": traceback}`` (a bug). The file is written before the exception propagates, so it
survives the launcher terminating the other ranks. The parent starts the ranks with
``torch.multiprocessing`` spawn (CPU, gloo) or DeepSpeed's launcher (GPU, NCCL; a module run as
``python -m <module> <spec.json>`` on each rank), then :func:`collect_reports` reads them.
"""

from __future__ import annotations

import json
import os
import subprocess
import traceback
from pathlib import Path
from typing import Any, Callable

from ppcr.errors import PPCRError
from ppcr.io import atomic_save_json
from ppcr.training.errors import error_from_dict, error_to_dict


def write_report(path: Path, report: dict[str, Any]) -> Path:
    """Write a rank's report atomically, so the parent never reads half of one.

    Only the launching process reads it back (``json.loads`` accepts NaN), and a loss or metric
    that diverged must be reported as it is, not make the report itself fail: NaN is allowed.
    """
    return atomic_save_json(path, report, allow_nan=True, default=str)


def report_outcome(result_dir: str, work: Callable[[], Any]) -> Any:
    """Run ``work()`` as this rank and write its outcome to ``result_dir/rank<RANK>.json``.

    ``work`` returns JSON-able data (the ``result``); errors are recorded, then re-raised.
    """
    path = Path(result_dir) / f"rank{os.environ.get('RANK', '0')}.json"
    try:
        result = work()
    except PPCRError as exc:
        write_report(path, {"error": error_to_dict(exc)})
        raise
    except BaseException:
        write_report(path, {"crash": traceback.format_exc()})
        raise
    write_report(path, {"result": result})
    return result


def collect_reports(
    result_dir: str,
    nproc: int,
    launcher_failed: str | None,
    cause: BaseException | None = None,
    what: str = "training",
) -> Any:
    """Rank 0's ``result``, or raise the first rank's error (its own class) or crash."""
    reports: dict[int, dict[str, Any]] = {}
    for rank in range(nproc):
        path = Path(result_dir) / f"rank{rank}.json"
        if path.is_file():
            reports[rank] = json.loads(path.read_text(encoding="utf-8"))
    for rank in sorted(reports):
        if "error" in reports[rank]:
            raise error_from_dict(reports[rank]["error"]) from None
    for rank in sorted(reports):
        if "crash" in reports[rank]:
            raise RuntimeError(f"{what} rank {rank} crashed:\n{reports[rank]['crash']}")
    if launcher_failed is not None or 0 not in reports or "result" not in reports[0]:
        raise RuntimeError(
            f"{what} processes failed without a report ({launcher_failed or 'no rank 0 result'})"
        ) from cause
    return reports[0]["result"]


def launch_spawn(target: Callable[..., None], args: tuple, nproc: int, result_dir: str, what: str = "training") -> None:
    """Run ``target(*args)`` on ``nproc`` spawned ranks; a failed rank's report is raised."""
    from ppcr.training.distributed import spawn_local

    try:
        spawn_local(target, nproc, args, rendezvous_dir=result_dir)
    except Exception as exc:  # noqa: BLE001 - the ranks' own reports say what went wrong
        collect_reports(result_dir, nproc, launcher_failed=f"{type(exc).__name__}: {exc}", cause=exc, what=what)


def launch_deepspeed(module: str, spec: dict[str, Any], nproc: int, result_dir: str, what: str = "training") -> None:
    """Run ``python -m <module> <result_dir>/spec.json`` once per GPU with DeepSpeed's launcher."""
    from ppcr.training.distributed import RANK_VARIABLES, RENDEZVOUS_VARIABLE, deepspeed_launch_command

    spec_path = Path(result_dir) / "spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    inherited = (*RANK_VARIABLES, "LOCAL_WORLD_SIZE", RENDEZVOUS_VARIABLE)
    env = {key: value for key, value in os.environ.items() if key not in inherited}
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *filter(None, [os.environ.get("PYTHONPATH")])])
    command = deepspeed_launch_command(module, [str(spec_path)], nproc)
    done = subprocess.run(command, env=env, check=False)
    if done.returncode != 0:
        failure = f"DeepSpeed's launcher exited with status {done.returncode}"
        collect_reports(result_dir, nproc, launcher_failed=failure, what=what)
