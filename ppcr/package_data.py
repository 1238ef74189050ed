"""Folders shipped inside the installed package: the recipes and the embedded default model.

They are found through :mod:`importlib.resources`, so they are read from wherever the package was
installed (a wheel in site-packages, or an editable install of the checkout), never from the
current directory. The recipes live in the checkout's top-level ``recipes/`` folder, where users
read and edit them; pyproject.toml maps that folder to the package ``ppcr.recipes``.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from ppcr.errors import PPCRError

RECIPES_PACKAGE = "ppcr.recipes"
DEFAULT_MODEL_NAME = "ppcr-shapes-tiny"


def package_folder(package: str, *parts: str) -> Path:
    """The folder ``parts`` inside ``package`` as a real path (models are read with file APIs)."""
    resource = importlib.resources.files(package)
    for part in parts:
        resource = resource / part
    if not isinstance(resource, Path):  # e.g. a zipped install: files exist only inside the archive
        raise PPCRError(
            f"{package} is installed in a form whose files cannot be opened directly ({type(resource).__name__})",
            hint="install ppcr unpacked: pip install ppcr (or pip install . in a checkout)",
        )
    return resource


def recipes_folder() -> Path:
    """The shipped recipes: ``ppcr.recipes`` (the checkout's ``recipes/`` in an editable install).

    A source tree used without installing (or installed before the mapping existed) has no
    ``ppcr.recipes`` package; its ``recipes/`` folder beside ``ppcr/`` is used then.
    """
    try:
        return package_folder(RECIPES_PACKAGE)
    except ModuleNotFoundError:
        beside = Path(__file__).resolve().parents[1] / "recipes"
        if beside.is_dir():
            return beside
        raise PPCRError(
            f"the shipped recipes are not installed (no package {RECIPES_PACKAGE})",
            hint="reinstall ppcr (pip install . in the checkout, or make setup)",
        ) from None


def default_model_folder() -> Path:
    """The embedded tiny Shapes-Ref model (``ppcr/assets/ppcr-shapes-tiny``)."""
    return package_folder("ppcr", "assets", DEFAULT_MODEL_NAME)
