"""Where concepts live: no import cycle between the model and its checkpoint I/O, and a variant's
modules decided once (:mod:`ppcr.modeling.variant`) and obeyed by the model's constructor."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from ppcr.config.schema import BaseComponent, choices
from ppcr.modeling import variant

ROOT = Path(__file__).resolve().parents[1]


def _runtime_imports(path: Path) -> set[str]:
    """Modules a file imports at run time, at top level or inside functions (not TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for node in ast.walk(stmt)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_checkpoint_io_never_imports_the_model():
    imports = _runtime_imports(ROOT / "ppcr" / "modeling" / "checkpoint.py")
    assert "ppcr.modeling.model" not in imports
    assert "ppcr.modeling.checkpoint" in _runtime_imports(ROOT / "ppcr" / "modeling" / "model.py")
    # ... and in a fresh interpreter, importing it leaves the model unimported.
    code = (
        "import sys, ppcr.modeling.checkpoint, ppcr.modeling.variant, ppcr.modeling.freezing;"
        "sys.exit('ppcr.modeling.model' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_model_imports_cleanly_first_in_a_fresh_interpreter():
    """With a cycle, importing either end first would hit a half-initialised module."""
    for first in ("ppcr.modeling.model", "ppcr.modeling.checkpoint"):
        code = f"import {first}; import ppcr.modeling.model as m; m.PPCRModel.from_pretrained"
        assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0, first


def test_every_unfreeze_choice_names_modules():
    """The recipe's ``model.unfreeze`` choices and the modules behind them are the same list."""
    import inspect

    from ppcr.modeling import freezing

    source = inspect.getsource(freezing.base_component)
    assert all(f'"{name}":' in source for name in choices(BaseComponent))


@pytest.mark.parametrize("spatial_prompt", ["none", "expression", "expression+semantic", "semantic"])
def test_the_model_builds_exactly_the_modules_its_variant_names(spatial_prompt):
    from ppcr.modeling.build import build_model
    from tests.tiny_recipes import tiny_recipe

    recipe = tiny_recipe(spatial_prompt=spatial_prompt, head_norm="batch", unfreeze=["sam_prompt_encoder"])
    model = build_model(recipe)
    named = variant.trained_module_paths(recipe.model)
    optional = ("sem_to_input", "box_head", "h_sem_norm", "p_box_norm")
    assert {name for name in optional if getattr(model, name) is not None} == set(named) & set(optional)
    assert model.adapters.names == variant.adapter_names(recipe.model)
    assert set(model.trainable_modules()) == set(named)
    # With SAM's prompt encoder unfrozen, the box corners stay frozen exactly when no box reaches them.
    corners = model.sam.prompt_encoder.point_embeddings[2].weight
    assert corners.requires_grad == variant.has_spatial_stage(spatial_prompt)
