"""Errors the library raises on bad input.

The library raises these; the CLI turns them into one line plus a hint and a non-zero exit.
Anything else reaching the CLI is a bug and is reported as such.
"""

from __future__ import annotations


class PPCRError(Exception):
    """Base class for expected, user-facing failures."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class RecipeError(PPCRError):
    """A recipe, overlay or override is invalid."""


class DataError(PPCRError):
    """A dataset layout, annotation file or image is missing or malformed."""


class UnsafePickleError(DataError):
    """A pickle tried to load something other than plain containers and scalars."""


class CheckpointError(PPCRError):
    """A model checkpoint is missing, corrupt or of the wrong architecture."""


class ImageError(PPCRError):
    """An input image cannot be read."""


def first_line(error: BaseException) -> str:
    """What a one-line message quotes of another library's exception: the first line of its text
    (surrounding blank lines dropped), or its type name when it has no text."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
