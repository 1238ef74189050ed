"""Evaluation by several processes: ``ppcr eval --nproc N``, ``torchrun`` and DeepSpeed's launcher.

A RefCOCO split is ~10k sentences, hours for one 7B model on one GPU; with N processes (one per
GPU, or gloo ranks on the CPU) each loads the checkpoint, scores its share of the split's batches
(:class:`~ppcr.evaluation.sharding.Shard`: whole images, the same batches one process would run),
and rank 0 gathers every row and writes ``metrics.json`` / ``per_sentence.csv``, identical to a
one-process run's apart from the timing fields.

How the processes start is training's machinery (:mod:`ppcr.training.launch`,
:mod:`ppcr.training.distributed`):

* ``nproc == 1``: in this process, no process group;
* ``nproc > 1`` on the CPU: ``torch.multiprocessing`` spawn, gloo, each rank with ``cores / N``
  threads unless ``OMP_NUM_THREADS`` says otherwise;
* ``nproc > 1`` on GPUs: DeepSpeed's launcher runs ``python -m ppcr.evaluation.processes
  <spec.json>`` once per GPU (NCCL);
* inside ``torchrun --nproc_per_node N -m ppcr_cli eval ...`` or ``deepspeed --num_gpus N
  --module ppcr_cli eval ...`` (several nodes too: ``--nnodes`` / ``--hostfile``), every process
  finds RANK / WORLD_SIZE / LOCAL_RANK in its environment and is one rank; rank 0 prints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ppcr.config.schema import Launcher, choices
from ppcr.errors import PPCRError

if TYPE_CHECKING:  # pragma: no cover
    from ppcr.evaluation.evaluate import EvalResult, ProgressFn

LAUNCHERS = choices(Launcher)
WORKER_MODULE = "ppcr.evaluation.processes"


@dataclass
class EvalJob:
    """What every rank evaluates (plain data: it travels to spawned and launched processes)."""

    model_dir: str
    dataset: str
    splits: list[str]
    data_root: str
    images: Optional[str] = None
    box_source: str = "predicted"
    out_dir: Optional[str] = None
    save_vis: int = 0
    batch_size: int = 16
    naive: bool = False
    device: str = "auto"
    dtype: Optional[str] = None  # None: bf16 on a GPU that has it, else fp32
    model_name: Optional[str] = None
    show_progress: bool = False


def evaluate_in_processes(
    job: EvalJob,
    nproc: int = 1,
    *,
    launcher: str = "auto",
    progress: Optional["ProgressFn"] = None,
) -> list["EvalResult"]:
    """Score ``job`` with ``nproc`` processes (see the module docstring); rank 0's results.

    Inside a process started by ``torchrun``/``deepspeed`` this call is that rank (``nproc``
    must be 1 or the launcher's WORLD_SIZE); every rank returns the full results and only rank
    0 writes files. ``progress`` is called for the sentences of this process (rank 0's share
    under a launcher); ranks started here draw their own bar when ``job.show_progress``.
    """
    from ppcr.training.distributed import external_world_size, launched_externally

    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise PPCRError(f"--nproc must be a positive integer, got {nproc!r}")
    if launcher not in LAUNCHERS:
        raise PPCRError(f"unknown launcher {launcher!r}; valid: {', '.join(LAUNCHERS)}")
    external = launched_externally()
    world_size = external_world_size() if external else nproc
    if external and nproc not in (1, world_size):
        raise PPCRError(
            f"--nproc {nproc} conflicts with the launcher's WORLD_SIZE={world_size}",
            hint="under torchrun/deepspeed, leave --nproc at 1",
        )
    check_world_size(job, world_size)
    if external:
        return run_rank(job, progress=progress)
    if nproc == 1:
        return _evaluate_here(job, progress)
    kind = _device_kind(job.device)
    if kind == "cuda":
        import torch

        if nproc > torch.cuda.device_count():
            raise PPCRError(
                f"--nproc {nproc} asks for more processes than the {torch.cuda.device_count()} visible GPUs",
                hint="use one process per GPU (several nodes: torchrun or deepspeed --hostfile)",
            )
    chosen = launcher if launcher != "auto" else ("deepspeed" if kind == "cuda" else "spawn")
    from ppcr.training.launch import collect_reports, launch_deepspeed, launch_spawn

    result_dir = tempfile.mkdtemp(prefix="ppcr-eval-")
    try:
        if chosen == "spawn":
            launch_spawn(run_and_report, (job, result_dir), nproc, result_dir, what="evaluation")
        else:
            spec = {"job": dataclasses.asdict(job), "result_dir": result_dir}
            launch_deepspeed(WORKER_MODULE, spec, nproc, result_dir, what="evaluation")
        payload = collect_reports(result_dir, nproc, launcher_failed=None, what="evaluation")
    finally:
        shutil.rmtree(result_dir, ignore_errors=True)
    return [result_from_dict(item) for item in payload]


def check_world_size(job: EvalJob, world_size: int) -> None:
    """Every process must get at least one image of every split (reads the annotation index)."""
    from ppcr.evaluation.data import load_split

    if world_size == 1:
        return
    for split in dict.fromkeys(job.splits):
        data = load_split(job.dataset, split, job.data_root, job.images)
        images = len(data.image_ids())
        if world_size > images:
            raise PPCRError(
                f"{world_size} processes for the {images} image(s) of {job.dataset}/{split}: "
                "each process needs at least one image",
                hint=f"use --nproc {images} or fewer",
            )


def _device_kind(device: str) -> str:
    from ppcr.utils.device import resolve_device

    return resolve_device(device).type


def _load_model(job: EvalJob, device):
    from transformers.utils import logging as hf_logging

    from ppcr.modeling.model import PPCRModel
    from ppcr.utils.device import preferred_dtype, resolve_dtype

    dtype = resolve_dtype(job.dtype, device) if job.dtype else preferred_dtype(device)
    hf_logging.disable_progress_bar()
    return PPCRModel.from_pretrained(job.model_dir, dtype=dtype, device=device)


def _evaluate(job: EvalJob, model, progress, shard) -> list["EvalResult"]:
    from ppcr.evaluation.evaluate import evaluate_many

    return evaluate_many(
        model,
        job.dataset,
        job.splits,
        job.data_root,
        images=job.images,
        box_source=job.box_source,
        out_dir=job.out_dir,
        save_vis=job.save_vis,
        batch_size=job.batch_size,
        naive=job.naive,
        progress=progress,
        model_name=job.model_name,
        shard=shard,
    )


def _evaluate_here(job: EvalJob, progress) -> list["EvalResult"]:
    from ppcr.utils.device import resolve_device

    return _evaluate(job, _load_model(job, resolve_device(job.device)), progress, None)


def run_rank(job: EvalJob, progress: Optional["ProgressFn"] = None) -> list["EvalResult"]:
    """Evaluate as the rank this process's environment describes (RANK, WORLD_SIZE, ...)."""
    import torch

    from ppcr.evaluation.sharding import Shard
    from ppcr.training.distributed import barrier, init_distributed

    kind = _device_kind(job.device)
    env = init_distributed(kind, with_deepspeed=False)
    if kind == "cpu" and "OMP_NUM_THREADS" not in os.environ and env.world_size > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
        torch.set_num_threads(max(1, cores // local))
    model = _load_model(job, torch.device(env.device))
    own_bar = _RankProgress() if progress is None and job.show_progress and env.is_main else None
    try:
        shown = (progress or own_bar) if env.is_main else None
        results = _evaluate(job, model, shown, Shard(env.rank, env.world_size))
    finally:
        if own_bar is not None:
            own_bar.close()
    barrier()  # rank 0 has written the files when any rank returns
    return results


def run_and_report(job: EvalJob, result_dir: str) -> None:
    """:func:`run_rank` in a launched process; rank 0 reports its results to the parent."""
    from ppcr.training.launch import report_outcome

    def work() -> Optional[list[dict[str, Any]]]:
        results = run_rank(job)
        return [result_to_dict(r) for r in results] if os.environ.get("RANK") == "0" else None

    report_outcome(result_dir, work)


class _RankProgress:
    """Rank 0's progress bars on stderr (its share of each split) in a launched process."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.bar.start()
        self.tasks: dict[str, Any] = {}

    def __call__(self, label: str, done: int, total: int) -> None:
        if label not in self.tasks:
            self.tasks[label] = self.bar.add_task(f"eval {label} (rank 0's share)", total=total)
        self.bar.update(self.tasks[label], completed=done, total=total)

    def close(self) -> None:
        self.bar.stop()


def result_to_dict(result: "EvalResult") -> dict[str, Any]:
    data = dataclasses.asdict(result)
    data["out_dir"] = None if result.out_dir is None else str(result.out_dir)
    data["vis_paths"] = [str(p) for p in result.vis_paths]
    return data


def result_from_dict(data: dict[str, Any]) -> "EvalResult":
    from ppcr.evaluation.evaluate import EvalResult
    from ppcr.evaluation.outputs import SentenceResult

    values = dict(data)
    values["sentences"] = [
        SentenceResult(**{**row, "box_xyxy": None if row["box_xyxy"] is None else tuple(row["box_xyxy"])})
        for row in data["sentences"]
    ]
    values["out_dir"] = None if data["out_dir"] is None else Path(data["out_dir"])
    values["vis_paths"] = [Path(p) for p in data["vis_paths"]]
    return EvalResult(**values)


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``python -m ppcr.evaluation.processes <spec.json>`` (one process per GPU)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ppcr.evaluation.processes <spec.json>", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    try:
        run_and_report(EvalJob(**spec["job"]), spec["result_dir"])
    except PPCRError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
