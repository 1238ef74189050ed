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

A pickle can also share one object many times and nest lists as deep as it likes in a few
bytes: 618 bytes of shared lists stand for a tree of 2^60 nodes. So the records are checked
against the refs schema by a walk of fixed depth that visits each object once, and the
sentences the readers will iterate (shared lists counted per ref) are capped.
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


def _repair_utf8(text: str) -> str:
    """Undo latin1 decoding of a string that was UTF-8 bytes in Python 2; leave others alone."""
    if text.isascii():
        return text
    try:
        return text.encode("latin1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def _load_payload(path: Path, data: bytes) -> tuple[Any, bool]:
    """The unpickled payload, and whether its strings need :func:`_repair_utf8`."""
    try:
        try:
            return restricted_loads(data), False
        except UnicodeDecodeError:
            return restricted_loads(data, encoding="latin1"), True
    except UnsafePickleError as error:
        raise UnsafePickleError(f"{path}: {error.message}", hint=error.hint) from None
    except _CORRUPT_ERRORS as error:
        raise DataError(
            f"{path} is truncated or not a pickle ({type(error).__name__}: {error})",
            hint="re-download or re-extract the dataset zip",
        ) from None


def load_refs_pickle(path: str | Path) -> list[dict]:
    """Read a refer ``refs(<split_by>).p`` file safely; return its list of ref records.

    Every record is checked against the refs schema (see :class:`_RefsSchema`) in time
    proportional to the file, however its objects are shared or nested.
    """
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
    payload, repair = _load_payload(path, data)
    if type(payload) is not list:
        raise DataError(f"{path} holds a {type(payload).__name__}, expected a list of ref records")
    return _RefsSchema(path, repair).records(payload)


_SCALARS = (str, int, float, bool, type(None))
_SEQUENCES = (list, tuple)
SENTENCES_KEY = "sentences"
# Sentences over all refs, counting a list shared by several refs once per ref (that is what the
# readers iterate). RefCOCO has 142,209; the cap is far above any real dataset and keeps a small
# file of shared lists from asking for billions of steps.
MAX_SENTENCES = 2_000_000
_SHOWN = 40


def _shown(key: Any) -> str:
    text = repr(key) if type(key) in _SCALARS else type(key).__name__
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


class _RefsSchema:
    """Validate (and, after the latin1 fallback, repair) ref records by their known shape.

    A ref is a flat record: string keys, values that are scalars (str, int, float, bool, None) or
    flat lists of scalars, plus ``sentences``, a list of sentence records of the same flat kind.
    The walk never goes deeper than that, so nesting cannot exhaust the stack, and each list or
    dict object is checked once (memoised by ``id``), so sharing cannot multiply the work.
    """

    def __init__(self, path: Path, repair: bool):
        self.path = path
        self.repair = repair
        self.memo: dict[int, Any] = {}
        self.sentences = 0

    def fail(self, where: str, what: str) -> DataError:
        return DataError(
            f"{self.path}: {where} {what}",
            hint="a refs pickle holds a list of flat ref records with a list of sentence records; "
            "re-download or re-extract the dataset zip",
        )

    def records(self, payload: list) -> list[dict]:
        out = []
        for position, record in enumerate(payload):
            if type(record) is not dict:
                raise DataError(
                    f"{self.path}: record {position} is a {type(record).__name__}, expected a dict"
                )
            out.append(self.record(record, f"record {position}", sentences_allowed=True))
            if self.sentences > MAX_SENTENCES:
                raise self.fail(
                    f"the first {position + 1} records", f"hold more than {MAX_SENTENCES:,} sentences "
                    "(a list shared by several refs counts for each)",
                )
        return out

    def text(self, value: Any) -> Any:
        return _repair_utf8(value) if self.repair and type(value) is str else value

    def record(self, record: dict, where: str, sentences_allowed: bool) -> dict:
        known = self.memo.get(id(record))
        if known is None:
            fields = {}
            for key, value in record.items():
                if type(key) is not str:
                    raise self.fail(where, f"has a key of type {type(key).__name__}, expected str")
                if sentences_allowed and key == SENTENCES_KEY:
                    value = self.sentence_list(value, f"{where} {key!r}")
                else:
                    value = self.field(value, f"{where} {_shown(key)}")
                if self.repair:  # only a repaired record is a copy; otherwise the checks are all
                    fields[self.text(key)] = value
            known = fields if self.repair else record
            self.memo[id(record)] = known
        if sentences_allowed:
            sentences = known.get(SENTENCES_KEY)
            self.sentences += len(sentences) if type(sentences) in _SEQUENCES else 0
        return known

    def field(self, value: Any, where: str) -> Any:
        kind = type(value)
        if kind in _SCALARS:
            return self.text(value)
        if kind not in _SEQUENCES:
            raise self.fail(where, f"is a {kind.__name__}, expected a scalar or a list of scalars")
        known = self.memo.get(id(value))
        if known is None:
            for item in value:
                if type(item) not in _SCALARS:
                    raise self.fail(where, f"holds a {type(item).__name__}, expected scalars only")
            known = kind(self.text(item) for item in value) if self.repair else value
            self.memo[id(value)] = known
        return known

    def sentence_list(self, value: Any, where: str) -> list:
        if type(value) not in _SEQUENCES:
            raise self.fail(where, f"is a {type(value).__name__}, expected a list of sentence records")
        known = self.memo.get(id(value))
        if known is None:
            items = []
            for position, sentence in enumerate(value):
                if type(sentence) is not dict:
                    raise self.fail(
                        f"{where}[{position}]", f"is a {type(sentence).__name__}, expected a dict"
                    )
                items.append(self.record(sentence, f"{where}[{position}]", sentences_allowed=False))
            known = type(value)(items) if self.repair else value
            self.memo[id(value)] = known
        return known
