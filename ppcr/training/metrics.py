"""What a run reports: rich progress on rank 0, ``metrics.jsonl`` rows, ``env.json``.

Each logged row (one every ``train.log_every`` steps and at the last step) holds the step, the
epoch, the learning rate the step used, the weighted loss and every unweighted term (means over
the steps of the window, the micro-batches and the ranks) and throughput. The same dict goes to
the progress line, to ``metrics.jsonl`` (one JSON object per line, appended and flushed as it is
produced; a file that is only ever appended needs no temp-and-rename) and to ``on_log``.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from ppcr.io import atomic_save_json, atomic_write_text, write_error
from ppcr.training.layout import ENV_FILE, METRICS_FILE



def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def truncate_metrics(path: str | Path, after_step: int) -> None:
    """Drop rows logged after ``after_step`` (a resumed run logs those steps again)."""
    path = Path(path)
    rows = read_metrics(path)
    kept = [row for row in rows if int(row.get("step", 0)) <= after_step]
    if len(kept) != len(rows):
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))


class MetricsLog:
    """Rank 0's sink for metric rows: progress display, ``metrics.jsonl``, callback."""

    def __init__(
        self,
        run_dir: Path,
        *,
        total_steps: int,
        start_step: int,
        show_progress: bool,
        on_log: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.path = Path(run_dir) / METRICS_FILE
        self.on_log = on_log
        self._progress = None
        self._task = None
        if show_progress:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]train[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, info="")

    def advance(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def log(self, row: dict[str, Any]) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
                handle.flush()
        except OSError as error:  # a full disk is a clear error, not an internal one
            raise write_error(self.path, error) from None
        if self._progress is not None:
            self._progress.update(self._task, completed=row["step"], info=progress_info(row))
        if self.on_log is not None:
            self.on_log(row)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit() -> dict[str, Any]:
    """The commit of the ppcr source tree and whether tracked files differ from it (None outside git)."""
    source = Path(__file__).resolve().parents[2]
    commit = _git(["rev-parse", "HEAD"], source)
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], source)
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def collect_env(**run_facts: Any) -> dict[str, Any]:
    """Versions, host and git facts plus whatever the trainer passes (seed, world size, config...)."""
    import torch

    from ppcr.version import __version__

    env: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": list(sys.argv),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            "ppcr": __version__,
            "torch": torch.__version__,
            "deepspeed": _version("deepspeed"),
            "transformers": _version("transformers"),
            "peft": _version("peft"),
            "numpy": _version("numpy"),
        },
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else [],
        "git": git_commit(),
    }
    env.update(run_facts)
    return env


def write_env(run_dir: Path, env: dict[str, Any]) -> Path:
    """Write ``env.json``; on resume the earlier launches are kept under ``previous_launches``."""
    path = Path(run_dir) / ENV_FILE
    previous: list[dict[str, Any]] = []
    if path.is_file() and env.get("resumed_from_step") is not None:
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            previous = [*old.pop("previous_launches", []), old]
        except (json.JSONDecodeError, AttributeError):
            previous = []
    if previous:
        env = {**env, "previous_launches": previous}
    # default=str: run facts may hold paths or other objects; allow_nan: never fail a run over env.json
    return atomic_save_json(path, env, allow_nan=True, default=str)


def progress_info(row: dict[str, Any]) -> str:
    """The progress bar's text for one metrics row: every parameter group's lr, not only the
    first, so a recipe with ``train.mllm_lr`` shows both schedules."""
    terms = " ".join(f"{k}={v:.4g}" for k, v in {**row.get("losses", {}), **row.get("metrics", {})}.items())
    lr = "/".join(f"{value:.3g}" for value in row.get("group_lrs", [row["lr"]]))
    return f"loss={row['loss']:.4g} {terms} lr={lr} {row['samples_per_s']:.1f} samples/s"
