"""The package as users install it: the wheel carries the recipes and the default model, runs from
a fresh environment outside the checkout, and declares exactly the libraries it imports."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]
# What a source distribution leaves out: environments, build outputs, caches, runs and data.
TOP_LEVEL_NOT_SOURCE = {".git", ".venv", "build", "dist", "runs", "data", ".pytest_cache"}


def _not_source(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == REPO
    return {
        n for n in names
        if (top and n in TOP_LEVEL_NOT_SOURCE) or n == "__pycache__" or n.endswith((".egg-info", ".pyc"))
    }


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _imported_top_level_modules() -> set[str]:
    """Top-level modules that ``import`` statements of ppcr/ and ppcr_cli/ name (docstrings aside)."""
    names = set()
    for folder in ("ppcr", "ppcr_cli"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("ppcr", "ppcr_cli")}


def test_declared_dependencies_are_exactly_the_imported_libraries():
    """A declared library nobody imports (tqdm was one) is dead weight; an imported one that is
    not declared works only while some other dependency happens to bring it."""
    distributions = importlib.metadata.packages_distributions()
    imported = set()
    for module in _imported_top_level_modules():
        assert module in distributions, f"{module} is imported but not installed"
        imported.update(d.lower().replace("_", "-") for d in distributions[module])
    project = _pyproject()["project"]
    declared = {_requirement_name(r) for r in project["dependencies"]}
    assert declared - imported == set(), "declared but never imported"
    # `ppcr serve` imports gradio, declared as the optional extra ppcr[demo].
    declared |= {_requirement_name(r) for r in project["optional-dependencies"]["demo"]}
    assert imported - declared == set(), "imported but not declared"


def test_every_sub_package_is_listed_for_the_wheel():
    from setuptools import find_packages

    setuptools_config = _pyproject()["tool"]["setuptools"]
    found = find_packages(str(REPO), include=["ppcr", "ppcr.*", "ppcr_cli", "ppcr_cli.*"])
    assert sorted(setuptools_config["packages"]) == sorted([*found, "ppcr.recipes"])
    assert setuptools_config["package-dir"] == {"ppcr.recipes": "recipes"}


def test_the_installed_package_reads_the_recipes_users_edit():
    """In the development install ``ppcr.recipes`` is the top-level recipes/ folder itself."""
    from ppcr.config.loading import list_recipes, recipes_dir

    spec = importlib.util.find_spec("ppcr.recipes")
    assert spec is not None and Path(spec.origin).parent == REPO / "recipes"
    assert recipes_dir() == REPO / "recipes"
    assert {"paper", "shapes"} <= {name for name, _, _ in list_recipes()}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the source tree (the checkout itself is left untouched)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(REPO, source, ignore=_not_source)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(work / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (built,) = (work / "dist").glob("ppcr-*.whl")
    return built


def test_the_wheel_carries_the_recipes_and_the_default_model(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for recipe in (REPO / "recipes").rglob("*.yaml"):
        assert f"ppcr/recipes/{recipe.relative_to(REPO / 'recipes').as_posix()}" in names
    model = REPO / "ppcr" / "assets" / "ppcr-shapes-tiny"
    for path in model.rglob("*"):
        if path.is_file():
            assert f"ppcr/assets/ppcr-shapes-tiny/{path.relative_to(model).as_posix()}" in names
    assert not any(name.startswith(("tests/", "recipes/")) for name in names)


def _dependencies_only(view: Path) -> Path:
    """This environment's site-packages without ppcr: symlinks to every other entry."""
    import torch

    site = Path(torch.__file__).resolve().parents[1]
    view.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower()
        if name.startswith(("ppcr", "__editable__")) or name.endswith((".pth", ".egg-link")):
            continue
        (view / entry.name).symlink_to(entry)
    return view


@pytest.mark.slow
def test_the_wheel_works_in_a_fresh_environment_outside_the_checkout(wheel, tmp_path):
    """``pip install`` of the wheel into a new venv (its dependencies borrowed from this one, so
    nothing is downloaded), then ``ppcr recipes show`` and ``ppcr predict`` from an unrelated
    folder: the recipes and the embedded model must come from the installed package."""
    from PIL import Image, ImageDraw

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    (Path(purelib) / "ppcr-test-dependencies.pth").write_text(f"{_dependencies_only(tmp_path / 'deps')}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PPCR_", "VIRTUAL_ENV"))}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def ppcr(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(venv / "bin" / "ppcr"), *args], cwd=elsewhere, capture_output=True, text=True, env=env, timeout=300
        )

    shown = ppcr("recipes", "show", "shapes")
    assert shown.returncode == 0, shown.stderr
    assert "name: shapes" in shown.stdout and "size: tiny" in shown.stdout

    where = subprocess.run(
        [str(python), "-c", "import ppcr, ppcr.recipes; print(ppcr.__file__); print(ppcr.recipes.__file__)"],
        cwd=elsewhere, capture_output=True, text=True, env=env, check=True,
    ).stdout.split()
    assert all(Path(p).is_relative_to(Path(purelib)) for p in where), where

    image = Image.new("RGB", (96, 80), "white")
    ImageDraw.Draw(image).ellipse((20, 20, 60, 60), fill="red")
    image.save(elsewhere / "photo.png")
    predicted = ppcr("predict", "photo.png", "red circle", "-o", "mask.png", "--device", "cpu", "--format", "json")
    assert predicted.returncode == 0, predicted.stderr
    assert '"expression": "red circle"' in predicted.stdout
    assert Image.open(elsewhere / "mask.png").size == (96, 80)
