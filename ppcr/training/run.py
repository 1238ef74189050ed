"""``train()``: the library entry point behind ``ppcr train`` (the CLI is a thin wrapper).

Run directory layout (every file and folder written atomically)::

    <out>/recipe.yaml                 resolved recipe (checked against the recipe on --resume)
    <out>/env.json                    versions, seed, git commit, world size, DeepSpeed config
    <out>/metrics.jsonl               one row per logged step
    <out>/checkpoints/step_000100/    model.save_pretrained export every train.save_every steps
    <out>/state/step_000100/, latest  DeepSpeed resumable state (newest only)
    <out>/final/                      model.save_pretrained export at the end
    <out>/.ppcr-train.lock            held while a run trains here (a second run is refused)

Everything that can be checked without data or model (train settings, world size, the run
directory, the recipe on resume, the launcher) is checked here before any process starts; the
dataset length is checked on the ranks before the model is built.

The path of ``ppcr train``: ``ppcr_cli/train.py`` → :func:`train` (checks, run-directory lock,
ranks started) → :func:`ppcr.training.worker.run_rank` in each rank →
:class:`ppcr.training.loop.Trainer` → the train step,
:class:`ppcr.training.ppcr_task.PPCRTrainModule` → :class:`ppcr.modeling.model.PPCRModel`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from ppcr.config.recipe_checks import check_recipe
from ppcr.config.schema import Launcher, Recipe, choices
from ppcr.training.errors import TrainingError
from ppcr.training.layout import CHECKPOINTS_DIR, FINAL_DIR, RECIPE_FILE, RUN_ENTRIES, STATE_DIR, STEP_TAG
from ppcr.training.plan import gradient_accumulation_steps
from ppcr.training.request import RunRequest, TrainTask
from ppcr.training.result import TrainResult
from ppcr.training.run_lock import run_directory_lock

# Keys that may change between an interrupted run and its resume without changing the training.
RESUME_MAY_CHANGE = ("name", "description", "train.save_every", "train.log_every", "data.num_workers", "eval")


def train(
    recipe: Recipe,
    out_dir: str | Path,
    model_factory: Callable[[Recipe], Any] | None = None,
    dataset_factory: Callable[[Recipe], Any] | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    *,
    resume: bool = False,
    nproc: int = 1,
    launcher: Launcher = "auto",
    progress: bool | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train PPCR as ``recipe`` says into ``out_dir`` (what ``ppcr train`` runs).

    ``launcher='auto'`` uses DeepSpeed's launcher on GPU and ``torch.multiprocessing`` spawn on
    CPU; ``nproc=1`` runs in this process. Inside a process already started by
    ``deepspeed``/``torchrun`` this call trains as that rank. ``on_log`` is called on rank 0 with
    each metrics row (in rank 0's process). Raises PPCRError subclasses for bad settings, a bad
    run directory, and :class:`~ppcr.training.errors.NonFiniteLossError`.

    The engine trains any model that follows the contract in :mod:`ppcr.training.loop`: pass
    ``model_factory(recipe)`` and ``dataset_factory(recipe)`` (and ``collate_fn``) to train
    something else than PPCR (the engine's tests do). They are callables; with ``spawn`` they
    travel pickled, so module-level functions or picklable objects. DeepSpeed's launcher starts
    fresh processes that receive data only, so it trains PPCR alone.
    """
    from ppcr.training.distributed import external_world_size, launched_externally

    task = _task(model_factory, dataset_factory, collate_fn)
    out = Path(out_dir)
    external = launched_externally()
    if nproc < 1:
        raise TrainingError(f"--nproc must be at least 1, got {nproc}")
    world_size = external_world_size() if external else nproc
    if external and nproc not in (1, world_size):
        raise TrainingError(
            f"--nproc {nproc} conflicts with the launcher's WORLD_SIZE={world_size}",
            hint="under deepspeed/torchrun, leave --nproc at 1",
        )
    check_recipe(recipe)  # again: a recipe built in code has not been through load_recipe
    gradient_accumulation_steps(recipe.train, world_size)
    chosen = "external" if external else "in-process" if nproc == 1 else _rank_launcher(launcher, nproc)
    if chosen == "deepspeed" and task is not None:
        raise TrainingError(
            "DeepSpeed's launcher trains PPCR only: its ranks are fresh processes that receive data, not code",
            hint="train other models with launcher='spawn'",
        )
    if chosen == "deepspeed" and on_log is not None:
        raise TrainingError(
            "on_log cannot be passed to ranks started by DeepSpeed's launcher", hint="use launcher='spawn'"
        )
    request = RunRequest(
        recipe=recipe,
        out_dir=str(out),
        task=task,
        resume=resume,
        show_progress=sys.stderr.isatty() if progress is None else progress,
        on_log=on_log,
        launcher=chosen,
    )

    # One run per folder: this process holds the lock while its ranks train (under an external
    # launcher, rank 0 does). It is taken before the folder is inspected, so two runs started
    # together cannot both find it free.
    holds_lock = not external or os.environ.get("RANK") == "0"
    with run_directory_lock(out) if holds_lock else contextlib.nullcontext():
        check_run_dir(out, recipe, resume, world_size)
        return _start_ranks(request, nproc)


def _task(
    model_factory: Callable[[Recipe], Any] | None,
    dataset_factory: Callable[[Recipe], Any] | None,
    collate_fn: Callable[[list[Any]], Any] | None,
) -> TrainTask | None:
    """The caller's task, or None for PPCR; factories must be callables, given together."""
    given = {"model_factory": model_factory, "dataset_factory": dataset_factory, "collate_fn": collate_fn}
    if all(value is None for value in given.values()):
        return None
    if model_factory is None or dataset_factory is None:
        raise TrainingError(
            "pass both model_factory and dataset_factory, or neither to train PPCR",
            hint="collate_fn is optional",
        )
    for role, value in given.items():
        if value is not None and not callable(value):
            raise TrainingError(
                f"{role} must be a callable, got {type(value).__name__} {value!r}",
                hint="pass the function itself (a module-level one for launcher='spawn')",
            )
    return TrainTask(model_factory, dataset_factory, collate_fn)


def _rank_launcher(launcher: str, nproc: int) -> str:
    """How ``nproc`` > 1 local ranks are started: ``spawn`` or ``deepspeed`` (``auto``: by device)."""
    from ppcr.training.distributed import device_type

    if launcher not in choices(Launcher):
        raise TrainingError(f"unknown launcher {launcher!r}; choose {', '.join(choices(Launcher))}")
    if device_type() == "cuda":
        import torch

        if nproc > torch.cuda.device_count():
            raise TrainingError(
                f"--nproc {nproc} asks for more processes than the {torch.cuda.device_count()} visible GPUs",
                hint="use one process per GPU (multi-node runs go through deepspeed --hostfile)",
            )
    if launcher != "auto":
        return launcher
    return "deepspeed" if device_type() == "cuda" else "spawn"


def _start_ranks(request: RunRequest, nproc: int) -> TrainResult:
    """Train as this process's rank, or start ``nproc`` ranks and return rank 0's result."""
    from ppcr.training.distributed import environment, free_port, rank_environment
    from ppcr.training.worker import run_rank

    if request.launcher == "external":
        return run_rank(request)
    if request.launcher == "in-process":
        with environment(rank_environment(0, 1, free_port())):
            return run_rank(request)
    result_dir = tempfile.mkdtemp(prefix="ppcr-train-")
    try:
        if request.launcher == "spawn":
            _launch_spawn(request, nproc, result_dir)
        else:
            _launch_deepspeed(request, nproc, result_dir)
        return _collect(result_dir, nproc, launcher_failed=None)
    finally:
        shutil.rmtree(result_dir, ignore_errors=True)


def _launch_spawn(request: RunRequest, nproc: int, result_dir: str) -> None:
    from ppcr.training.launch import launch_spawn
    from ppcr.training.worker import run_and_report

    launch_spawn(run_and_report, (request, result_dir), nproc, result_dir)


def _launch_deepspeed(request: RunRequest, nproc: int, result_dir: str) -> None:
    from ppcr.training.launch import launch_deepspeed
    from ppcr.training.worker import request_to_spec

    launch_deepspeed("ppcr.training.worker", request_to_spec(request, result_dir), nproc, result_dir)


def _collect(
    result_dir: str, nproc: int, launcher_failed: str | None, cause: BaseException | None = None
) -> TrainResult:
    """Turn the ranks' reports into rank 0's TrainResult, or raise the first rank's error."""
    from ppcr.training.launch import collect_reports

    return TrainResult.from_dict(collect_reports(result_dir, nproc, launcher_failed, cause))


def check_run_dir(out: Path, recipe: Recipe, resume: bool, world_size: int) -> None:
    """Refuse to overwrite a run, to resume nothing, or to resume with another recipe or world size.

    A folder whose run stopped before its first training state was saved (no ``state/latest``)
    and exported no weights holds nothing worth keeping: a fresh start replaces it. One that
    exported weights but has no state cannot be resumed; the message names what to delete.
    """
    from ppcr.training.checkpointing import latest_state_tag, read_state_summary

    existing = [name for name in RUN_ENTRIES if (out / name).exists()]
    has_state = latest_state_tag(out / STATE_DIR) is not None
    exported = _exported_weights(out)
    if not resume:
        if has_state:
            raise TrainingError(
                f"{out} already holds a training run ({', '.join(existing)})",
                hint="pass --resume to continue it, or choose a new output directory",
            )
        if exported:
            shown = ", ".join(exported[:3]) + (f" and {len(exported) - 3} more" if len(exported) > 3 else "")
            raise TrainingError(
                f"{out} holds exported weights ({shown}) but no training state to resume from",
                hint=f"to train again from step 0 delete {_delete_list(out, exported)}, "
                "or choose a new output directory",
            )
        return
    if not has_state:
        if exported:
            hint = f"delete {_delete_list(out, exported)}, then start again without --resume"
        elif existing:
            hint = (
                "the run stopped before its first training state (saved every train.save_every steps); "
                "start it again without --resume"
            )
        else:
            hint = "start without --resume"
        raise TrainingError(
            f"nothing to resume in {out}: no complete training state under {out / STATE_DIR}", hint=hint
        )
    differences = recipe_differences(out / RECIPE_FILE, recipe)
    if differences:
        more = f"; and {len(differences) - 3} more" if len(differences) > 3 else ""
        shown = "; ".join(differences[:3]) + more
        raise TrainingError(
            f"the recipe differs from the run's {RECIPE_FILE}: {shown}",
            hint=f"resume with the recipe saved in {out / RECIPE_FILE}",
        )
    summary = read_state_summary(out / STATE_DIR) or {}
    if summary.get("world_size") != world_size:
        raise TrainingError(
            f"the training state in {out / STATE_DIR} was written by {summary.get('world_size')} processes, "
            f"this run has {world_size}",
            hint=f"resume with --nproc {summary.get('world_size')} "
            "(ZeRO partitions the optimizer state by rank)",
        )


def _exported_weights(out: Path) -> list[str]:
    """Complete model exports in the run folder (``checkpoints/step_*``, ``final``), relative names."""
    found = []
    checkpoints = out / CHECKPOINTS_DIR
    if checkpoints.is_dir():
        found += sorted(
            f"{CHECKPOINTS_DIR}/{p.name}" for p in checkpoints.iterdir() if p.is_dir() and STEP_TAG.match(p.name)
        )
    if (out / FINAL_DIR).is_dir():
        found.append(FINAL_DIR)
    return found


def _delete_list(out: Path, exported: list[str]) -> str:
    folders = dict.fromkeys(str(out / name.split("/")[0]) for name in exported)
    return " and ".join(folders)


def recipe_differences(saved_path: Path, recipe: Recipe) -> list[str]:
    """``key: saved -> now`` for every setting that changed and may not change on resume."""
    from ppcr.config.loading import recipe_from_dict, recipe_to_dict
    from ppcr.config.yaml_text import load_yaml
    from ppcr.errors import RecipeError

    if not saved_path.is_file():
        return [f"{saved_path.name} is missing"]
    try:
        saved = recipe_to_dict(recipe_from_dict(load_yaml(saved_path.read_text(encoding="utf-8"), saved_path.name) or {}))
    except RecipeError as exc:
        return [f"{saved_path.name} is invalid ({exc})"]
    current = recipe_to_dict(recipe)
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if prefix and any(prefix == k or prefix.startswith(k + ".") for k in RESUME_MAY_CHANGE):
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        elif a != b:
            out.append(f"{prefix}: {a!r} -> {b!r}")

    walk(saved, current, "")
    return out
