"""Checks on output paths, made before any work starts, so that nothing written replaces an input.

Paths are compared as files, not as strings: ``photo.png``, ``./link-to-photo.png``,
``here/photo.png`` (``here`` a link to ``.``) and a hard link of ``photo.png`` all name one
file, and writing to any of them would destroy the others' content (our writes replace the
destination by a rename). Existing files are compared by device and inode (``os.stat``), which
sees through symlinks, hard links and case-insensitive file systems; a path that does not exist
yet is compared by its resolved form (``os.path.realpath``), links in its folders followed.

Nothing here creates or changes a file; every failure is a one-line :class:`PPCRError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Hashable

from ppcr.errors import PPCRError


def file_identity(path: str | os.PathLike[str]) -> Hashable:
    """A key that two paths share exactly when they name the same file (or the same file-to-be)."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return ("path", os.path.normcase(os.path.realpath(path)))
    return ("file", status.st_dev, status.st_ino)


def _nearest_existing(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def check_writable(path: Path) -> None:
    """Raise a one-line PPCRError if ``path`` cannot be written as a file (nothing is created)."""
    if path.is_dir():
        raise PPCRError(f"output {path} is a directory", hint="give a file name, e.g. out/mask.png")
    _check_parent_writable(path, path.parent if str(path.parent) else Path("."))


def check_writable_folder(path: Path, option: str = "output folder") -> None:
    """Raise a one-line PPCRError unless files can be made in the folder ``path`` (created if
    missing): it is not a file, and the nearest existing folder on its way is writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PPCRError(f"{option} {path} is a file, not a folder", hint="give a folder, e.g. --out results/")
    _check_parent_writable(path, path)


def _check_parent_writable(path: Path, folder: Path) -> None:
    existing = _nearest_existing(folder.absolute())
    if not existing.is_dir():
        raise PPCRError(f"cannot write {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PPCRError(f"cannot write {path}: {existing} is not writable", hint="pick another output folder")


def check_distinct(paths: Sequence[Path]) -> None:
    """Two outputs naming the same file would silently overwrite each other."""
    seen: dict[Hashable, Path] = {}
    for path in paths:
        key = file_identity(path)
        if key in seen:
            first = seen[key]
            also = "" if str(first) == str(path) else f" (also named {first})"
            raise PPCRError(f"two outputs would be written to the same file {path}{also}")
        seen[key] = path


class ProtectedInputs:
    """Files that no output may replace under any name, each with how to call it in an error
    (``input image``, ``input image of line 3``). Each file is looked up once, so checking the
    outputs of a batch of N jobs costs O(N) ``stat`` calls, not O(N²)."""

    def __init__(self) -> None:
        self._files: dict[Hashable, tuple[Path, str]] = {}

    def add(self, path: str | os.PathLike[str], description: str = "input image") -> None:
        self._files.setdefault(file_identity(path), (Path(path), description))

    def check(self, outputs: Iterable[Path]) -> None:
        """Raise a one-line PPCRError for the first output that is one of the inputs: it would be
        overwritten (and, in a batch, a later job would then read the overwritten file)."""
        for output in outputs:
            found = self._files.get(file_identity(output))
            if found is None:
                continue
            source, description = found
            other_name = "" if str(source) == str(output) else f" ({source}: the same file under another name)"
            raise PPCRError(
                f"output {output} would overwrite the {description}{other_name}",
                hint="write the outputs somewhere else",
            )


def _resolved_forms(path: Path) -> set[Path]:
    """``path`` as given (made absolute) and with every link resolved."""
    return {Path(os.path.normcase(os.path.abspath(path))), Path(os.path.normcase(os.path.realpath(path)))}


def check_folder_spares_inputs(folder: Path, inputs: Iterable[Path]) -> None:
    """``folder`` will be replaced as a whole: it must neither be nor contain any of ``inputs``
    (the model, the data, the images), under any name."""
    folder = Path(folder)
    folder_forms = _resolved_forms(folder)
    folder_key = file_identity(folder)
    for source in inputs:
        source = Path(source)
        forms = _resolved_forms(source)
        same = file_identity(source) == folder_key or bool(forms & folder_forms)
        inside = any(place in form.parents for form in forms for place in folder_forms)
        if same or inside:
            raise PPCRError(
                f"the results would replace {folder}, which {'is' if same else 'holds'} the input {source}",
                hint="pick another output folder (--out)",
            )
