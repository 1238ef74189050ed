"""Loading the refer ``refs(*.p)`` pickles without trusting them.

The RefCOCO-family pickles are data downloaded from the internet, and a pickle can name any
importable callable and call it while loading. The refs payload is a list of dicts of strings,
numbers and lists, all of which come through pickle *opcodes* that never ask for a global; the
only thing that asks is ``find_class``. So our unpickler refuses every global — even builtins such
as ``eval`` or ``getattr`` — and a malicious file fails before anything runs.

The files were written by Python 2's ``cPickle``, where ``str`` is bytes. Python 3 decodes those
bytes as ASCII by default; non-ASCII sentences then fail, so we retry with ``latin1`` (every byte
maps to one code point, the usual py2-pickle fallback) and afterwards restore strings that were
really UTF-8 bytes (``'cafÃ©'`` → ``'café'``).
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import Any

from ppcr.errors import DataError, UnsafePickleError

# What a broken or non-pickle file raises from Unpickler.load().
_CORRUPT_ERRORS = (
    EOFError,
    pickle.UnpicklingError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
    struct.error,
    OverflowError,
    MemoryError,
)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only plain containers and scalars.

    list, dict, tuple, str, bytes, int, float, bool and None are built by opcodes directly; every
    global lookup (the road to code execution) is refused.
    """

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle hook
        raise UnsafePickleError(
            f"refused to load global {module}.{name} from a pickle: "
            "only plain containers and scalars are allowed",
            hint="the file is not a refer refs pickle, or it has been tampered with",
        )

    def persistent_load(self, pid):  # pragma: no cover - refs pickles never use persistent ids
        raise UnsafePickleError(
            f"refused a persistent id {pid!r} in a pickle: "
            "only plain containers and scalars are allowed"
        )


def restricted_loads(data: bytes, encoding: str = "ASCII") -> Any:
    """Unpickle bytes with :class:`RestrictedUnpickler` (errors propagate unchanged)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()


def _repair_utf8(value: Any) -> Any:
    """Undo latin1 decoding of strings that were UTF-8 bytes in Python 2; leave the rest alone."""
    if isinstance(value, str):
        if value.isascii():
            return value
        try:
            return value.encode("latin1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return value
    if isinstance(value, list):
        return [_repair_utf8(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_repair_utf8(item) for item in value)
    if isinstance(value, dict):
        return {_repair_utf8(key): _repair_utf8(item) for key, item in value.items()}
    return value


def _load_payload(path: Path, data: bytes) -> Any:
    try:
        try:
            return restricted_loads(data)
        except UnicodeDecodeError:
            return _repair_utf8(restricted_loads(data, encoding="latin1"))
    except UnsafePickleError as error:
        raise UnsafePickleError(f"{path}: {error.message}", hint=error.hint) from None
    except _CORRUPT_ERRORS as error:
        raise DataError(
            f"{path} is truncated or not a pickle ({type(error).__name__}: {error})",
            hint="re-download or re-extract the dataset zip",
        ) from None


def load_refs_pickle(path: str | Path) -> list[dict]:
    """Read a refer ``refs(<split_by>).p`` file safely; return its list of ref records."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(
            f"refs pickle not found: {path}",
            hint="expected the refer layout <root>/<dataset>/refs(<split_by>).p",
        ) from None
    except OSError as error:
        raise DataError(f"cannot read refs pickle {path}: {error.strerror or error}") from None
    payload = _load_payload(path, data)
    if not isinstance(payload, list):
        raise DataError(f"{path} holds a {type(payload).__name__}, expected a list of ref records")
    for position, record in enumerate(payload):
        if not isinstance(record, dict):
            raise DataError(
                f"{path}: record {position} is a {type(record).__name__}, expected a dict"
            )
    return payload
