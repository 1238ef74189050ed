"""``torch.load`` of weight files, safely (``weights_only=True``: tensors and plain containers
only) and quietly: two kinds of file it refuses get one clear reason instead of torch's
paragraph about the changed ``weights_only`` default, and no raw ``UserWarning`` on the way.

- A TorchScript archive (``torch.jit.save``): torch first warns that it "dispatches" the file
  to ``torch.jit.load``, then refuses it under ``weights_only``.
- PyTorch's legacy ``.tar`` format (before 0.4): cannot be read without unrestricted unpickling.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ppcr.errors import CheckpointError

_REFUSED_KINDS = (
    ("TorchScript archive", "a TorchScript archive (torch.jit.save), not a state dict of tensors"),
    ("legacy .tar format", "in PyTorch's legacy .tar format (before 0.4), which cannot be read safely"),
)
RESAVE_HINT = "load it in a trusted Python and save its state dict: torch.save(model.state_dict(), 'weights.pth')"


def load_torch_weights(path: str | Path, *, mmap: bool = False) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)``; a TorchScript or
    legacy-tar file is a one-line :class:`CheckpointError`, other failures propagate unchanged."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*looks like a TorchScript archive", category=UserWarning)
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as error:  # noqa: BLE001 - re-raised unless it is one of the refused kinds
            text = str(error)
            for marker, what in _REFUSED_KINDS:
                if marker in text:
                    raise CheckpointError(f"{path} is {what}", hint=RESAVE_HINT) from None
            raise
