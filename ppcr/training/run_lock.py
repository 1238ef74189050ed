"""One training run per run directory: an exclusive lock file inside it.

Two ``ppcr train`` runs on the same ``--out`` would append to one ``metrics.jsonl`` and overwrite
each other's checkpoints and training state. The process that launches the ranks (or rank 0
under an external launcher) therefore holds ``<out>/.ppcr-train.lock`` for the whole run, with
``flock``: the kernel releases it when the process ends, however it ends, so a crashed or killed
run never leaves a stale lock behind. The file holds the holder's PID and host, so a refused run
can say who holds the folder.

``flock`` locks belong to an open file, not to a process, so a second run in the same process is
refused too. On release the file is deleted (and the run directory too, if this lock created it
and nothing else was written); an acquirer checks after locking that the file it locked is still
the one at the path, so deleting it cannot let two runs in.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from ppcr.training.errors import TrainingError
from ppcr.training.layout import LOCK_FILE


class RunDirectoryInUse(TrainingError):
    """Another training run holds the run directory."""


def _holder(fd: int) -> str:
    """``PID 123 on host`` from the lock file's content, or '' when it cannot be read yet."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    except OSError:
        return ""
    if len(text) >= 1 and text[0].isdigit():
        return f"PID {text[0]}" + (f" on {text[1]}" if len(text) > 1 else "")
    return ""


def _create_directory(out: Path) -> list[Path]:
    """Create ``out`` and any missing parents; return the folders created, deepest first."""
    created: list[Path] = []
    folder = out
    while not folder.exists():
        created.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrainingError(
            f"cannot create the run directory {out}: {error.strerror or error}",
            hint="choose an --out folder that can be created and written",
        ) from None
    return created


def _acquire(path: Path) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise TrainingError(
                f"cannot create the lock file {path}: {error.strerror or error}",
                hint="the run directory must be writable",
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _holder(fd)
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise TrainingError(f"cannot lock {path}: {error.strerror or error}") from None
            by = f" ({holder})" if holder else ""
            raise RunDirectoryInUse(
                f"{path.parent} is in use by another training run{by}",
                hint="wait for that run to end or stop it, or choose another --out; "
                "two runs in one folder would mix their metrics and checkpoints",
            ) from None
        # The previous holder deletes the file on release: make sure we locked the live one.
        try:
            live = os.stat(path)
        except FileNotFoundError:
            os.close(fd)
            continue
        mine = os.fstat(fd)
        if (mine.st_dev, mine.st_ino) != (live.st_dev, live.st_ino):
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        return fd


@contextlib.contextmanager
def run_directory_lock(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the run directory ``out`` (created if missing) exclusively for the block.

    Raises :class:`RunDirectoryInUse` at once if another run holds it. Yields the lock file path.
    """
    out = Path(out)
    created = _create_directory(out)
    path = out / LOCK_FILE
    try:
        fd = _acquire(path)
    except BaseException:
        _remove_if_empty(created)
        raise
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        _remove_if_empty(created)


def _remove_if_empty(created: list[Path]) -> None:
    """Undo the creation of run folders in which nothing was written (a run refused up front)."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            return
