"""Read model checkpoints tensor by tensor, one shard at a time.

Released checkpoints are large (GLaMM: two pickled ``.bin`` shards, 16.8 GB), so converting one must
not hold the whole model in memory. :func:`iter_tensors` opens one shard, yields its tensors one by
one without keeping a reference to what it has handed out, and closes the shard before opening the
next: at any moment at most one shard is open. ``.bin``/``.pth`` files are memory-mapped
(``torch.load(mmap=True, weights_only=True)``), safetensors are read per tensor with ``safe_open``.

Accepted sources: a local directory holding one of the Hugging Face layouts below, a single
``.safetensors``/``.bin``/``.pth``/``.pt`` file (SAM's ``sam_vit_h_4b8939.pth`` is one), or a hub id
that is already in the local Hugging Face cache. Nothing is ever downloaded here: fetching weights is
the user's explicit step (``hf download <id>``), so tests and offline machines behave the same.

Every failure is a one-line :class:`~ppcr.errors.CheckpointError` naming the file at fault.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ppcr.errors import CheckpointError, first_line

if TYPE_CHECKING:
    import torch

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
PICKLE_SUFFIXES = (".bin", ".pth", ".pt")
TENSOR_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DIRECTORY_HINT = (
    "pass a directory with model.safetensors[.index.json] or pytorch_model.bin[.index.json], "
    "or a single .safetensors/.bin/.pth file"
)


@dataclass(frozen=True)
class Checkpoint:
    """A resolved checkpoint: its shard files in reading order and, if sharded, the index.

    ``weight_map`` maps each tensor name to the shard file name the index assigns it to; it is
    None for single-file checkpoints.
    """

    source: str
    root: Path
    shards: tuple[Path, ...]
    weight_map: dict[str, str] | None

    @property
    def format(self) -> str:
        return "safetensors" if self.shards[0].suffix == ".safetensors" else "pickle"


def resolve_checkpoint(source: str | Path, *, cache_dir: str | Path | None = None) -> Checkpoint:
    """Find the shard files of ``source`` (directory, file or cached hub id) and check they exist.

    Missing shards are reported here, before anything is read, so a conversion never fails
    half-way through for a file that was absent from the start.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return _single_file(str(source), path)
    if path.is_dir():
        return _directory(str(source), path)
    if _HUB_ID.match(str(source)) and not str(source).startswith((".", "/", "~")):
        return _directory(str(source), _cached_snapshot(str(source), cache_dir))
    raise CheckpointError(f"checkpoint {source} does not exist", hint=_DIRECTORY_HINT)


def local_directory(source: str | Path, *, cache_dir: str | Path | None = None) -> Path:
    """The local folder of ``source``: a directory as given, or a hub id's cached snapshot.

    For sources read for their small files only (a tokenizer): no weight files are required,
    and, as for weights, nothing is downloaded.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if _HUB_ID.match(str(source)) and not str(source).startswith((".", "/", "~")) and not path.exists():
        return _cached_snapshot(str(source), cache_dir)
    raise CheckpointError(f"{source} is not a directory", hint="pass a local directory or a cached hub id")


def iter_tensors(source: str | Path | Checkpoint) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor of the checkpoint, one shard at a time.

    Tensors come back exactly as stored (dtype and values untouched). The generator drops its own
    reference to each tensor as it yields it, so a consumer that does not keep the tensor lets it
    go; the next shard is opened only after the current one is exhausted and released.
    """
    checkpoint = source if isinstance(source, Checkpoint) else resolve_checkpoint(source)
    for shard in checkpoint.shards:
        expected = _expected_keys(checkpoint, shard)
        if shard.suffix == ".safetensors":
            stream = _iter_safetensors(shard)
        else:
            stream = _iter_pickle(shard)
        seen: set[str] = set()
        for name, tensor in stream:
            seen.add(name)
            yield name, tensor
            del tensor
        _check_index_keys(shard, expected, seen)


def checkpoint_keys(source: str | Path | Checkpoint) -> list[str]:
    """The tensor names of a checkpoint, read without loading tensor data where possible.

    Sharded checkpoints answer from the index, safetensors from their header; a single pickle is
    memory-mapped (cheap), except legacy non-zip pickles, which have to be read.
    """
    checkpoint = source if isinstance(source, Checkpoint) else resolve_checkpoint(source)
    if checkpoint.weight_map is not None:
        return list(checkpoint.weight_map)
    shard = checkpoint.shards[0]
    if shard.suffix == ".safetensors":
        with _open_safetensors(shard) as handle:
            return list(handle.keys())
    return list(_load_pickle(shard))


# --- resolution ---------------------------------------------------------------------------------


def _cached_snapshot(repo_id: str, cache_dir: str | Path | None) -> Path:
    """The local snapshot folder of a hub repository, never downloading."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir)
    except Exception as error:  # the hub client raises several types for "not cached"
        raise CheckpointError(
            f"{repo_id} is neither a local path nor in the local Hugging Face cache "
            f"({type(error).__name__})",
            hint=f"download it first (hf download {repo_id}) or pass a local directory",
        ) from None
    return Path(folder)


def _single_file(source: str, path: Path) -> Checkpoint:
    if path.name.endswith(".index.json"):
        return _directory(source, path.parent)
    if path.suffix not in TENSOR_SUFFIXES:
        raise CheckpointError(
            f"{path} is not a checkpoint file (expected {', '.join(TENSOR_SUFFIXES)})",
            hint=_DIRECTORY_HINT,
        )
    return Checkpoint(source=source, root=path.parent, shards=(path,), weight_map=None)


def _directory(source: str, root: Path) -> Checkpoint:
    for index_name in (SAFETENSORS_INDEX, BIN_INDEX):
        if (root / index_name).is_file():
            return _indexed(source, root, root / index_name)
    for single in (SAFETENSORS_SINGLE, BIN_SINGLE):
        if (root / single).is_file():
            return Checkpoint(source=source, root=root, shards=(root / single,), weight_map=None)
    pickles = sorted(p for p in root.iterdir() if p.is_file() and p.suffix in (".pth", ".pt"))
    if len(pickles) == 1:
        return Checkpoint(source=source, root=root, shards=(pickles[0],), weight_map=None)
    found = f"{len(pickles)} .pth files" if pickles else "no weight files"
    raise CheckpointError(f"{root} is not a checkpoint directory ({found})", hint=_DIRECTORY_HINT)


def _indexed(source: str, root: Path, index_path: Path) -> Checkpoint:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"cannot read {index_path}: {_first_line_cut(error)}", hint="the index file is corrupt"
        ) from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path} has no weight_map", hint="the index file is corrupt")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise CheckpointError(f"{index_path} has a malformed weight_map", hint="the index file is corrupt")
    names = sorted(set(weight_map.values()))
    for name in names:
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise CheckpointError(f"{index_path} names an invalid shard file {name!r}")
        if not (root / name).is_file():
            raise CheckpointError(
                f"shard {name} listed in the index is missing",
                hint=f"re-download the checkpoint; {root} holds an incomplete copy",
            )
    return Checkpoint(source=source, root=root, shards=tuple(root / n for n in names), weight_map=weight_map)


def _expected_keys(checkpoint: Checkpoint, shard: Path) -> set[str] | None:
    if checkpoint.weight_map is None:
        return None
    return {key for key, name in checkpoint.weight_map.items() if name == shard.name}


def _check_index_keys(shard: Path, expected: set[str] | None, seen: set[str]) -> None:
    if expected is None:
        return
    absent = sorted(expected - seen)
    if absent:
        more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
        raise CheckpointError(
            f"tensor {absent[0]}{more} listed in the index for shard {shard.name} is not in that shard",
            hint="the index and the shard files come from different checkpoints; re-download it",
        )


# --- reading ------------------------------------------------------------------------------------


def _open_safetensors(path: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as error:
        raise _corrupt(path, error) from None


def _iter_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    with _open_safetensors(path) as handle:
        for name in handle.keys():
            try:
                tensor = handle.get_tensor(name)
            except Exception as error:
                raise _corrupt(path, error) from None
            yield name, tensor
            del tensor


def _iter_pickle(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    state = _load_pickle(path)
    for name in list(state):
        yield name, state.pop(name)


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    """Load a pickled state dict safely (tensors and plain containers only), memory-mapped if possible."""
    import pickle

    from ppcr.weights.torch_pickle import load_torch_weights

    mmap = zipfile.is_zipfile(path)  # legacy (pre-1.6) pickles cannot be memory-mapped
    try:
        state = load_torch_weights(path, mmap=mmap)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise CheckpointError(
                f"{path} contains pickled objects other than tensors; refusing to unpickle it",
                hint="only plain state dicts of tensors are loaded (torch.load weights_only=True)",
            ) from None
        raise _corrupt(path, error) from None
    except MemoryError:
        raise
    except Exception as error:
        raise _corrupt(path, error) from None
    return _as_state_dict(path, state)


def _as_state_dict(path: Path, state: object) -> dict[str, torch.Tensor]:
    """Accept a plain state dict, or one wrapped under ``state_dict``/``model`` (training checkpoints)."""
    import torch

    if isinstance(state, dict) and not _all_tensors(state):
        for wrapper in ("state_dict", "model", "module"):
            inner = state.get(wrapper)
            if isinstance(inner, dict) and inner and _all_tensors(inner):
                state = inner
                break
    if not isinstance(state, dict) or not _all_tensors(state):
        kind = type(state).__name__
        if isinstance(state, dict):
            bad = next(k for k, v in state.items() if not (isinstance(k, str) and torch.is_tensor(v)))
            kind = f"dict whose entry {bad!r} is not a tensor"
        raise CheckpointError(f"{path} is not a state dict of tensors (found a {kind})")
    return dict(state)


def _all_tensors(state: dict) -> bool:
    import torch

    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())


def _corrupt(path: Path, error: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{path} is corrupt or truncated ({_first_line_cut(error)})",
        hint="re-download the checkpoint; the file could not be parsed",
    )


def _first_line_cut(error: BaseException) -> str:
    """:func:`~ppcr.errors.first_line`, cut to 160 characters (parsers quote whole files)."""
    line = first_line(error)
    return line if len(line) <= 160 else line[:157] + "..."
