"""Atomic writes: an output file or directory is either the old one or the complete new one.

Everything is first written next to its destination (same directory, so the same file system)
and then moved into place with ``os.replace``, which is atomic on POSIX and Windows. A crash or an
exception mid-write leaves the destination untouched and removes the temporary. Failures of the
destination itself (no permission, parent is a file, disk full) become a one-line ``PPCRError``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ppcr.errors import PPCRError

_HINT = "check that the destination folder exists or can be created, is writable and has free space"


def _umask() -> int:
    """The process umask, read without changing it (Linux), else the common default."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# How other writers report a full disk or quota in their messages (safetensors: Rust's io::Error).
_NO_SPACE_TEXT = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")
# torch.save's zip writer loses the errno: a failed write shows up as one of these.
_TORCH_WRITER_TEXT = ("PytorchStreamWriter", "inline_container.cc", "iostream error")
_SAFETENSORS_WRITE_TEXT = "Error while serializing"
# After ENOSPC a file system has (next to) nothing left; below this much it counts as full.
FULL_BELOW_BYTES = 16 * 2**20


def no_space_error(path: str | os.PathLike[str]) -> PPCRError:
    return PPCRError(
        f"no space left on device while writing {path}",
        hint="free disk space (or quota) on that file system, or write somewhere else",
    )


def write_error(path: str | os.PathLike[str], error: OSError) -> PPCRError:
    """The one-line PPCRError for an OSError met while writing ``path``."""
    path = Path(path)
    if error.errno in _NO_SPACE:
        return no_space_error(path)
    reason = error.strerror or type(error).__name__
    return PPCRError(f"cannot write {path}: {reason}", hint=_HINT)


def filesystem_full(path: str | os.PathLike[str]) -> bool:
    """Whether the file system holding ``path`` (or its nearest existing parent) is out of space
    or of inodes for this user."""
    folder = Path(path)
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    if stats.f_bavail * stats.f_frsize < FULL_BELOW_BYTES:
        return True
    return stats.f_files > 0 and stats.f_favail == 0


def _chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def describe_write_failure(error: BaseException, path: str | os.PathLike[str]) -> PPCRError | None:
    """A one-line PPCRError if ``error`` is a failure to write ``path``, else None (a bug).

    Third-party writers report a full disk in their own ways: an ``OSError`` with errno ENOSPC
    (Python, shutil), "No space left on device (os error 28)" in the text (safetensors), or only
    "unexpected pos 128 vs 0" / "iostream error" (``torch.save``'s zip writer, which drops the
    errno; the file system is then checked for free space).
    """
    chain = _chain(error)
    for link in chain:
        if isinstance(link, PPCRError):
            return link
        if isinstance(link, OSError):
            return write_error(path, link)
    texts = [str(link) for link in chain]
    if any(marker in text for text in texts for marker in _NO_SPACE_TEXT):
        return no_space_error(path)
    torch_writer = any(marker in text for text in texts for marker in _TORCH_WRITER_TEXT)
    if torch_writer or any(_SAFETENSORS_WRITE_TEXT in text for text in texts):
        if filesystem_full(path):
            return no_space_error(path)
        first = texts[0].strip().splitlines()[0] if texts[0].strip() else type(error).__name__
        return PPCRError(f"cannot write {path}: {first}", hint=_HINT)
    return None


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(path, error) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; on success it replaces ``path``.

    The temporary keeps the destination's suffix (``.mask.tmp-1a2b.png``) so writers that pick
    the format from the extension (PIL, safetensors) behave as for the real name. It exists
    (empty) when yielded; the caller overwrites it. On an exception in the body it is removed,
    the exception propagates unchanged and ``path`` is left as it was. The new file gets the
    usual permissions (0666 minus the umask) instead of ``mkstemp``'s private 0600.
    """
    path = Path(path)
    _make_parent(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent)
    except OSError as error:
        raise write_error(path, error) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise write_error(path, error) from None


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (flushed and fsynced before the rename)."""
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            raise write_error(path, error) from None
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_save_json(
    path: str | os.PathLike[str],
    obj: Any,
    indent: int = 2,
    *,
    allow_nan: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> Path:
    """Write ``obj`` as JSON (UTF-8, trailing newline) atomically.

    NaN and infinities are refused (``ValueError``) by default because they are not valid JSON
    and other tools would fail to read the file later. ``allow_nan=True`` writes them as Python's
    ``json`` module does (``NaN``, ``Infinity``), for files only ever read back by ``json.loads``
    (e.g. a training rank's report, whose losses may have diverged). ``default`` converts objects
    ``json`` cannot encode, as in :func:`json.dumps`.
    """
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=allow_nan, default=default) + "\n"
    return atomic_write_text(path, text)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def replace_directory(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Move the complete directory ``source`` to ``target``, replacing any previous ``target``.

    The previous ``target`` is renamed aside to ``<target>.old-XXXXXXXX``, ``source`` is renamed
    in, and only then is the old copy deleted; if the second rename fails the old one is put
    back. ``target`` is thus never half-written, and missing only for the instant between two
    renames (POSIX cannot swap a non-empty directory atomically): a crash there leaves the
    complete old copy, which :func:`remove_stale_temporaries` restores. ``source`` must be in the
    same folder (file system) as ``target``; OSErrors propagate unchanged.
    """
    source, target = Path(source), Path(target)
    old: Path | None = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f"{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    try:
        os.replace(source, target)
    except OSError:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        _remove(old)
    return target


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh directory ``<path>.tmp-XXXXXXXX`` to build in; on success it becomes ``path``.

    An existing ``path`` is replaced safely with :func:`replace_directory`. On an exception in
    the body the temporary directory is deleted and ``path`` is untouched.
    """
    path = Path(path)
    _make_parent(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"{path.name}.tmp-", dir=path.parent))
    except OSError as error:
        raise write_error(path, error) from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        replace_directory(tmp, path)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(path, error) from None


# The names the functions above give their temporaries (``tempfile`` draws 8 characters from
# [a-z0-9_], :func:`replace_directory` 8 hex digits).
_INCOMPLETE_DIRECTORY = re.compile(r"^.+\.tmp-[a-z0-9_]{8}$")  # atomic_directory
_INCOMPLETE_FILE = re.compile(r"^\..*\.tmp-[a-z0-9_]{8}(\..*)?$")  # atomic_path: .<stem>.tmp-XXXXXXXX<suffix>
_PREVIOUS_COPY = re.compile(r"^(?P<name>.+)\.old-[0-9a-f]{8}$")  # replace_directory


def destination_of(path: str | os.PathLike[str]) -> Path:
    """The path an :func:`atomic_directory` temporary becomes (``path`` itself for any other path),
    for writers that are handed the temporary but must name the final folder."""
    path = Path(path)
    if _INCOMPLETE_DIRECTORY.match(path.name):
        return path.with_name(path.name.rsplit(".tmp-", 1)[0])
    return path


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Clean up after writes in ``folder`` that a crash interrupted; return what was deleted.

    ``<name>.tmp-XXXXXXXX`` (a directory being built) and ``.<stem>.tmp-XXXXXXXX<suffix>`` (a
    file being written) are incomplete and deleted. ``<name>.old-XXXXXXXX`` is the complete
    previous copy of ``<name>``: it is moved back if ``<name>`` is missing (a crash between the
    two renames of :func:`replace_directory`), else deleted. Only call this when no write into
    ``folder`` is in progress. A missing folder is fine.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        previous = _PREVIOUS_COPY.match(entry.name)
        if previous is not None:
            original = folder / previous["name"]
            if not (original.exists() or original.is_symlink()):
                os.replace(entry, original)
                continue
        elif not (_INCOMPLETE_DIRECTORY.match(entry.name) or _INCOMPLETE_FILE.match(entry.name)):
            continue
        _remove(entry)
        removed.append(entry)
    return removed
