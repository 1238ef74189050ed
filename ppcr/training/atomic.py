"""Atomic writes for run outputs: build next to the target, then rename.

A reader (or a resumed run) must never see a half-written checkpoint, so every file and
directory the trainer produces is assembled under a temporary name in the same folder and
renamed into place only once complete. ``os.replace`` is atomic for files on one file system;
directories are swapped in two renames (old aside, new in), so a crash between them leaves the
complete old copy under a ``.old-`` name and never a partial one under the real name.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

TEMP_PREFIXES = (".tmp-", ".old-", ".partial-")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def replace_dir(source: str | Path, target: str | Path) -> Path:
    """Move the complete directory ``source`` to ``target``, replacing any previous ``target``."""
    source, target = Path(source), Path(target)
    old = target.with_name(f".old-{target.name}-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(source, target)
    if old.exists():
        shutil.rmtree(old)
    return target


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it becomes ``target``.

    On an exception the temporary folder is removed and any previous ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, target)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Clean up after interrupted writes in ``folder``.

    ``.tmp-*`` and ``.partial-*`` are incomplete and deleted. An ``.old-<name>-<pid>`` folder is
    the complete previous copy of ``<name>``: it is moved back if ``<name>`` is missing (a crash
    between the two renames of :func:`replace_dir`), else deleted.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".old-"):
            original = folder / entry.name[len(".old-") :].rsplit("-", 1)[0]
            if not original.exists():
                os.replace(entry, original)
                continue
        if entry.name.startswith(TEMP_PREFIXES):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
