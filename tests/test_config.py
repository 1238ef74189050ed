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
    assert {"paper", "shapes", "shapes-pointer"} <= set(SHIPPED)


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
    # An overlay changes only the keys it names: its own knob, and for our pointer head the loss
    # term and teacher boxes that come with it.
    sections = {"model", "loss", "train"} if (axis, value) == ("spatial_head", "pointer") else {section}
    base = dataclasses.asdict(load_recipe(name))
    changed = dataclasses.asdict(recipe)
    diff = {s for s in base if base[s] != changed[s]}
    assert diff <= sections
    assert set(overlay_data(choice)) == sections


def test_design_axes_are_all_shipped():
    axes = {axis: {c.value for c in choices} for axis, choices in list_axes().items()}
    assert axes == {
        "spatial_prompt": {"none", "expression", "expression+semantic", "semantic"},
        "spatial_head": {"mlp", "attn", "pointer"},
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


# ----------------------------------------------------------------------------- values no run can use


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.sentences_per_image=0"], "data.sentences_per_image: must be at least 1, got 0"),
        (["loss.l1=-1"], "loss.l1: must be a finite weight of 0 or more, got -1.0"),
        (["loss.ce=nan"], "loss.ce: must be a finite weight"),
        (["loss.bce=0", "loss.dice=0", "loss.l1=0", "loss.ce=0"], "loss: every weight is 0"),
        (["data.datasets=[]"], "data.datasets: name at least one dataset"),
        (["data.datasets=[shapes, shapez]"], "data.datasets[1]: unknown dataset 'shapez'"),
        (["data.train_split=test"], "data.train_split: 'test' is not a split of shapes"),
        (["data.num_workers=-1"], "data.num_workers: must be at least 0, got -1"),
        (["train.batch_size=40"], "train.batch_size: 40 is not divisible by train.micro_batch_size = 32"),
        (["train.warmup_steps=0"], "train.warmup_steps: must be at least 1"),
        (["train.zero_stage=3"], "train.zero_stage: 3 is not supported"),
        (["model.tiny.clip_hidden=66"], "model.tiny.clip_hidden: 66 is not divisible by model.tiny.clip_heads = 4"),
        (["model.tiny.llm_layers=0"], "model.tiny.llm_layers: must be at least 1, got 0"),
        (["model.tiny.sam_prompt_dim=36"], "model.tiny.sam_prompt_dim: half of it (36 / 2"),
        (["spatial-head=attn", "model.attn_head.heads=3"], "model.tiny.attn_head_dim: 64 is not divisible by"),
        (["model.max_length=0"], "model.max_length: must be at least 1, got 0"),
        (["init.source=checkpoint"], "init.source=checkpoint needs init.checkpoint"),
        (["eval.batch_size=0"], "eval.batch_size: must be at least 1, got 0"),
        (["eval.splits=[shapes/val, shapes/tset]"], "eval.splits[1]: unknown split 'tset' for shapes"),
        (["eval.splits=[val]"], "eval.splits[0]: expected DATASET/SPLIT"),
    ],
)
def test_values_no_run_can_use_fail_in_load_recipe(overrides, expected):
    """Checked where the recipe is loaded (``recipes show`` as much as ``train``), not at run time."""
    with pytest.raises(RecipeError) as info:
        load_recipe("shapes", overrides)
    assert info.value.message.startswith(expected), info.value.message
    assert "\n" not in info.value.message


def test_a_recipe_file_with_a_value_no_run_can_use_is_refused_on_load(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  lora:\n    dropout: 1.0\n")
    with pytest.raises(RecipeError, match=r"model.lora.dropout: must be in \[0, 1\), got 1.0"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="model.lora.r"):
        recipe_from_dict({"model": {"lora": {"r": 0}}})


def test_recipes_show_refuses_what_train_refuses_with_one_line():
    from tests.test_cli import _assert_one_line_error, run

    _assert_one_line_error(
        run("recipes", "show", "shapes", "data.sentences_per_image=0", "loss.l1=-1"), 1, "must be"
    )
    _assert_one_line_error(
        run("recipes", "show", "shapes", "data.sentences_per_image=0"), 1, "data.sentences_per_image: must be at least 1"
    )


def test_the_world_size_is_the_one_thing_left_for_the_launch():
    """A batch that splits into micro-batches may still not split over the processes."""
    from ppcr.training.plan import gradient_accumulation_steps

    train = load_recipe("shapes", ["train.batch_size=96"]).train  # micro-batch 32: 3 per step
    assert gradient_accumulation_steps(train, 1) == 3
    with pytest.raises(RecipeError, match="micro_batch_size × world size = 32 × 2 = 64"):
        gradient_accumulation_steps(train, 2)
