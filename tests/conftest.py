"""Fixtures shared by several test files: built once per test session, because building them
costs seconds and the tests only read them."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random PPCR model (the ``shapes`` recipe) saved without a recipe. Read-only."""
    from ppcr.config.loading import load_recipe
    from ppcr.modeling.build import build_model

    directory = tmp_path_factory.mktemp("models") / "ppcr-tiny"
    build_model(load_recipe("shapes")).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def small_shapes_root(tmp_path_factory):
    """Shapes-Ref with seed 0 and 20 images (val: 28 sentences on 2 images). Read-only."""
    from ppcr.data.shapes import generate_shapes_ref

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_ref(root, seed=0, images=20)
    return root


@pytest.fixture
def damaged_model_copy(tiny_model_dir, tmp_path):
    """A factory: ``damaged_model_copy("delete:config.json")`` or ``("truncate:<file>")`` (keeps
    the first half of its bytes) returns a copy of the tiny model with that one file damaged."""

    def make(damage: str):
        action, name = damage.split(":")
        assert action in ("delete", "truncate"), damage
        copy = tmp_path / "damaged-model"
        shutil.copytree(tiny_model_dir, copy)
        target = copy / name
        if action == "delete":
            target.unlink()
        else:
            target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
        return copy

    return make
