"""Recipes: every shipped recipe and overlay validates; overrides are typed; mistakes are named."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from ppcr.config.ablations import list_axes, overlay_data, parse_choice
from ppcr.config.loading import (
    apply_overrides,
    dump_recipe,
    list_recipes,
    load_recipe,
    recipe_from_dict,
    save_recipe,
)
from ppcr.config.schema import Recipe
from ppcr.errors import RecipeError

SHIPPED = [name for name, _, _ in list_recipes()]


def test_shipped_recipes_are_the_expected_ones():
    assert {"paper", "shapes"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_validates(name):
    recipe = load_recipe(name)
    assert isinstance(recipe, Recipe)
    assert recipe.name == name
    # Round trip through the saved form gives the same recipe.
    assert recipe_from_dict(yaml.safe_load(dump_recipe(recipe))) == recipe


@pytest.mark.parametrize(
    "axis,value",
    [(axis, c.value) for axis, choices in list_axes().items() for c in choices],
)
@pytest.mark.parametrize("name", SHIPPED)
def test_every_overlay_validates_on_every_recipe(name, axis, value):
    choice = parse_choice(f"{axis.replace('_', '-')}={value}")
    recipe = load_recipe(name, overlays=[choice.overlay])
    section = "eval" if axis == "box_source" else "model"
    assert getattr(getattr(recipe, section), axis) == value
    # An overlay changes only the keys it names.
    base = dataclasses.asdict(load_recipe(name))
    changed = dataclasses.asdict(recipe)
    diff = {s for s in base if base[s] != changed[s]}
    assert diff <= {section}
    assert set(overlay_data(choice)) == {section}


def test_design_axes_are_all_shipped():
    axes = {axis: {c.value for c in choices} for axis, choices in list_axes().items()}
    assert axes == {
        "spatial_prompt": {"none", "expression", "expression+semantic", "semantic"},
        "spatial_head": {"mlp", "attn"},
        "box_source": {"predicted", "gt"},
    }


def test_paper_recipe_is_the_papers_setting():
    r = load_recipe("paper")
    assert (r.model.size, r.model.sam) == ("7b", "vit_h")
    assert (r.model.lora.r, r.model.lora.alpha, r.model.lora.dropout) == (8, 16, 0.05)
    assert r.model.lora.target_modules == ["q_proj", "v_proj"]
    assert (r.train.lr, r.train.epochs, r.train.batch_size) == (3e-4, 5, 8)
    assert (r.train.scheduler, r.train.zero_stage, r.train.precision) == ("WarmupDecayLR", 2, "bf16")
    assert (r.loss.bce, r.loss.dice, r.loss.l1, r.loss.ce) == (2.0, 0.5, 2.0, 0.5)
    assert r.init.glamm_semantic == "MBZUAI/GLaMM-RefSeg"
    assert r.init.glamm_base == "MBZUAI/GLaMM-GranD-Pretrained"
    assert r.init.llava == "llava-hf/llava-1.5-7b-hf"
    assert r.init.clip == "openai/clip-vit-large-patch14-336"
    assert r.data.datasets == ["refcoco", "refcoco+", "refcocog"]
    assert (r.model.spatial_prompt, r.model.spatial_head, r.eval.box_source) == ("semantic", "mlp", "predicted")


def test_overrides_are_typed_by_the_schema():
    r = load_recipe(
        "shapes",
        ["train.lr=1e-4", "train.max-steps=7", "spatial-head=attn", "box-source=gt",
         "model.lora.target_modules=q_proj,k_proj", "init.checkpoint=null", "data.root=123"],
    )
    assert r.train.lr == pytest.approx(1e-4) and isinstance(r.train.lr, float)
    assert r.train.max_steps == 7
    assert r.model.spatial_head == "attn" and r.eval.box_source == "gt"
    assert r.model.lora.target_modules == ["q_proj", "k_proj"]
    assert r.init.checkpoint is None
    assert r.data.root == "123"


@pytest.mark.parametrize(
    "override,expected",
    [
        ("train.lrr=1", "unknown key 'train.lrr'"),
        ("trian.lr=1", "unknown key 'trian.lr'"),
        ("train.lr=fast", "train.lr must be a number"),
        ("train.epochs=2.5", "train.epochs must be an integer"),
        ("model.spatial_head=atn", "must be one of mlp, attn"),
        ("spatial-prompt=both", "must be one of none, expression, expression+semantic, semantic"),
        ("model=tiny", "model is a section"),
        ("train.lr.x=1", "train.lr is a value"),
        ("lr", "not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, expected):
    with pytest.raises(RecipeError) as info:
        load_recipe("shapes", [override])
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_did_you_mean_hints():
    with pytest.raises(RecipeError) as info:
        load_recipe("shapes", ["train.lrr=1"])
    assert info.value.hint == "did you mean train.lr?"
    with pytest.raises(RecipeError) as info:
        load_recipe("shapes", ["model.spatial_head=atn"])
    assert info.value.hint == "did you mean 'attn'?"
    with pytest.raises(RecipeError) as info:
        load_recipe("shapes", ["spatial-haed=attn"])
    assert info.value.hint == "did you mean spatial-head?"
    with pytest.raises(RecipeError) as info:
        load_recipe("papr")
    assert info.value.hint == "did you mean 'paper'?"


def test_recipe_files_are_validated_too(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  sizee: tiny\n")
    with pytest.raises(RecipeError, match="unknown key model.sizee"):
        load_recipe(bad)
    bad.write_text("train:\n  lr: [1, 2]\n")
    with pytest.raises(RecipeError, match="train.lr must be a number"):
        load_recipe(bad)
    bad.write_text("train: {lr: 1\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  lr: 3e-4\n")  # PyYAML reads this as a string
    assert load_recipe(path).train.lr == pytest.approx(3e-4)


def test_resolved_recipe_saved_beside_a_run_reloads(tmp_path):
    recipe = load_recipe("shapes", ["train.lr=5e-4", "spatial-prompt=expression"])
    path = save_recipe(recipe, tmp_path / "run" / "recipe.yaml")
    assert load_recipe(path) == recipe
    assert [p.name for p in path.parent.iterdir()] == ["recipe.yaml"]  # no temp file left


def test_apply_overrides_does_not_mutate_its_input():
    data = {"train": {"lr": 1.0}}
    apply_overrides(data, ["train.lr=2"])
    assert data == {"train": {"lr": 1.0}}


@pytest.mark.parametrize(
    "text,expected",
    [("spatial-hed=attn", "unknown ablation axis"), ("spatial-head=attention", "unknown value 'attention'"),
     ("spatial-head", "AXIS=VALUE")],
)
def test_bad_ablation_choices(text, expected):
    with pytest.raises(RecipeError, match=expected):
        parse_choice(text)
