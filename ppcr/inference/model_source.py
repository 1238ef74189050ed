"""Where the predictor's weights come from: the embedded default, a directory or a hub id.

Resolution order for ``path_or_hub_id``:

1. ``None`` → :data:`DEFAULT_MODEL`, the tiny Shapes-Ref model shipped inside the package
   (``ppcr/assets/ppcr-shapes-tiny/``); until it is installed this is a clear one-line error.
2. An existing directory → used as it is.
3. Something shaped like a hub id (``owner/name``, not an existing path, not starting with
   ``.``, ``/`` or ``~``) → a snapshot from the local Hugging Face cache first (works offline);
   only if it is not cached and ``HF_HUB_OFFLINE`` is not set, a download.
4. Anything else → "model directory not found".
"""

from __future__ import annotations

import os
from pathlib import Path

from ppcr.errors import CheckpointError
from ppcr.package_data import default_model_folder

DEFAULT_MODEL = default_model_folder()
NO_DEFAULT_MESSAGE = "no default model is installed; pass --model DIR"


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(constants.HF_HUB_OFFLINE) or env in ("1", "true", "yes", "on")


def looks_like_hub_id(text: str) -> bool:
    """``owner/name``, not written like a local path (``./``, ``/``, ``~``, a trailing slash)."""
    if text.startswith((".", "/", "~", "\\")) or text.endswith(("/", "\\")) or os.path.isabs(text):
        return False
    parts = text.split("/")
    return len(parts) == 2 and all(parts)


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except HFValidationError as error:
        raise CheckpointError(f"model {repo_id!r} is not a directory nor a valid hub id: {error}") from None
    except LocalEntryNotFoundError:
        if _offline():
            raise CheckpointError(
                f"model {repo_id!r} is not a local directory and is not in the Hugging Face cache "
                "(HF_HUB_OFFLINE is set)",
                hint="download it first (huggingface-cli download REPO) or pass --model DIR",
            ) from None
    try:
        return Path(snapshot_download(repo_id))
    except Exception as error:  # network, authentication, missing repo: all mean "not available"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"model {repo_id!r} is not a local directory and could not be fetched from the hub: {reason}",
            hint="check the name and your connection, or pass --model DIR",
        ) from None


def resolve_model_dir(path_or_hub_id: str | os.PathLike[str] | None = None) -> Path:
    """The local checkpoint directory to load (see the module docstring for the order)."""
    if path_or_hub_id is None:
        if not DEFAULT_MODEL.is_dir():
            raise CheckpointError(NO_DEFAULT_MESSAGE)
        return DEFAULT_MODEL
    text = os.fspath(path_or_hub_id)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(
            f"model path {text} is a file, not a checkpoint directory",
            hint="pass the folder written by save_pretrained / ppcr train",
        )
    if isinstance(path_or_hub_id, str) and looks_like_hub_id(text):
        return _hub_snapshot(text)
    raise CheckpointError(f"model directory not found: {text}")
