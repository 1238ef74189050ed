"""``PPCRModel.push_to_hub``: save the model as a checkpoint folder and upload that folder.

The folder is exactly what :meth:`~ppcr.modeling.model.PPCRModel.save_pretrained` writes (model
card included, its loading snippet naming the repository), built in a temporary folder that is
removed afterwards, so ``PPCRPredictor.from_pretrained(repo_id)`` later reads the same files.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ppcr.errors import CheckpointError

if TYPE_CHECKING:  # pragma: no cover
    from ppcr.modeling.model import PPCRModel
    from ppcr.modeling.model_card import MetricsArgument


class LocalBaseWarning(UserWarning):
    """The pushed checkpoint points at base weights in local files, which the hub copy lacks."""


def _local_base_files(model: "PPCRModel") -> list[str]:
    from ppcr.inference.model_source import looks_like_hub_id
    from ppcr.modeling.checkpoint import stores_base

    if stores_base(model):
        return []  # the base is stored inside the checkpoint
    base = model.base
    return [value for value in (base.llava, base.sam) if value and not looks_like_hub_id(value)]


def push_to_hub(
    model: "PPCRModel",
    repo_id: str,
    *,
    metrics: "MetricsArgument" = None,
    private: Optional[bool] = None,
    token: Optional[str] = None,
    revision: Optional[str] = None,
    commit_message: str = "Upload PPCR checkpoint",
    create_repo: bool = True,
) -> str:
    """Upload ``model`` to the hub model repository ``repo_id``; return the commit's URL.

    ``metrics`` as for ``save_pretrained`` (default: the evaluations found beside the folder the
    model was loaded from). ``create_repo`` creates the repository if it does not exist yet
    (``private`` then sets its visibility). Failures of the hub (network, permission) are one-line
    :class:`~ppcr.errors.CheckpointError` s.
    """
    from huggingface_hub import HfApi

    from ppcr.inference.model_source import looks_like_hub_id
    from ppcr.modeling.checkpoint import save_checkpoint
    from ppcr.modeling.model_card import collect_evaluations

    if not isinstance(repo_id, str) or not looks_like_hub_id(repo_id):
        raise CheckpointError(f"{repo_id!r} is not a hub repository id", hint="use OWNER/NAME, e.g. me/ppcr-shapes")
    evaluations = collect_evaluations(metrics, model.source_dir)
    local = _local_base_files(model)
    if local:
        warnings.warn(
            LocalBaseWarning(
                f"the checkpoint refers to local base weights ({', '.join(local)}); the hub copy loads only "
                "where those paths exist (its model card says so)"
            ),
            stacklevel=2,
        )
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="ppcr-push-") as tmp:
        folder = Path(tmp) / "checkpoint"
        save_checkpoint(model, folder, recipe=model.recipe, metrics=evaluations, card_location=repo_id)
        try:
            if create_repo:
                api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                repo_type="model",
                revision=revision,
                commit_message=commit_message,
            )
        except Exception as error:  # network, authentication, permissions: all "could not push"
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CheckpointError(
                f"cannot push to {repo_id}: {reason}", hint="check the repository name, your token and connection"
            ) from None
    return str(commit)
