"""Output files of ``ppcr predict``: their names, a writability check, and an all-or-nothing write.

Naming: with one expression the mask goes exactly where the user said (``mask.png``); with
several, each gets a 1-based number before the suffix (``mask-1.png``, ``mask-2.png`` …), in the
order the expressions were given. Overlays are numbered the same way.

Everything that can be checked without the model (a directory where a file should go, a parent
that is a file or not writable, an unknown image format, two outputs with the same name) is
checked before the model is loaded, so a typo costs a second, not a model load; so is every
output against every input image, as files (:mod:`ppcr.output_checks`: a symlink or a hard link
of an input is that input). The files of one image are then written together: each into a
temporary file beside its destination, and only when all of them are complete are they renamed
into place; on any failure the temporaries are removed and no destination is touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ppcr.errors import PPCRError
from ppcr.output_checks import check_writable

__all__ = [
    "check_mask_path",
    "check_overlay_path",
    "numbered_paths",
    "write_prediction_files",
]

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from ppcr.inference.predictor import Prediction

MASK_SUFFIX = ".png"


def numbered_paths(path: Path, count: int) -> list[Path]:
    """``[path]`` for one output, else ``stem-1.suffix`` … ``stem-N.suffix`` beside it."""
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(1, count + 1)]


def check_mask_path(path: Path) -> None:
    """Masks are lossless binary PNGs; another suffix would be misleading."""
    check_writable(path)
    if path.suffix.lower() != MASK_SUFFIX:
        raise PPCRError(
            f"mask output {path} must end in .png (masks are written as binary PNGs)",
            hint="use e.g. -o mask.png; a JPEG would blur the mask's edges",
        )


def check_overlay_path(path: Path) -> None:
    """Overlays may be any format PIL writes, chosen by the suffix."""
    from PIL import Image

    check_writable(path)
    extensions = Image.registered_extensions()
    fmt = extensions.get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise PPCRError(
            f"overlay output {path} has no image suffix PIL can write ({path.suffix or 'none'})",
            hint="use .png or .jpg",
        )


def write_prediction_files(
    image: "Image.Image",
    predictions: Sequence["Prediction"],
    mask_paths: Optional[Sequence[Path]],
    overlay_paths: Optional[Sequence[Path]],
) -> None:
    """Write the mask PNGs and overlays of one image together (all of them or none)."""
    from ppcr.images import overlay, save_mask_png
    from ppcr.io import atomic_path

    try:
        with contextlib.ExitStack() as stack:
            for index, prediction in enumerate(predictions):
                if mask_paths:
                    save_mask_png(prediction.mask, stack.enter_context(atomic_path(mask_paths[index])))
                if overlay_paths:
                    drawn = overlay(image, prediction.mask, prediction.box)
                    drawn.save(stack.enter_context(atomic_path(overlay_paths[index])))
            # Leaving the stack renames every temporary into place; an exception removes them.
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise PPCRError(f"cannot write the outputs: {reason}", hint="check free space and permissions") from None

