"""`ppcr ablate`: variants map to overlays, training is reused across eval-only choices."""

from __future__ import annotations

import json

import pytest

from ppcr.ablation import plan_ablation, run_ablation, split_arguments
from ppcr.data.shapes import generate_shapes_ref
from ppcr.errors import PPCRError, RecipeError
from tests.test_cli import _assert_one_line_error, run

QUICK = ["data.datasets=shapes", "train.batch_size=8", "train.micro_batch_size=8", "train.max_steps=2",
         "train.warmup_steps=1", "eval.splits=shapes/val"]


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_ref(root, seed=2, images=24)
    return root


def test_choices_and_overrides_are_told_apart():
    choices, overrides = split_arguments(["spatial-head=attn", "train.lr=1e-4", "box_source=gt"])
    assert [c.label for c in choices] == ["spatial-head=attn", "box-source=gt"]
    assert overrides == ["train.lr=1e-4"]
    with pytest.raises(RecipeError, match="unknown value 'attention'"):
        split_arguments(["spatial-head=attention"])
    with pytest.raises(PPCRError, match="given twice"):
        split_arguments(["spatial-head=attn", "spatial-head=mlp"])


def test_overlays_reach_the_recipe_and_name_the_run(tmp_path):
    plan = plan_ablation(["spatial-prompt=none", "train.lr=1e-4"], runs_root=tmp_path)
    assert plan.recipe.model.spatial_prompt == "none" and plan.recipe.train.lr == pytest.approx(1e-4)
    assert plan.run_dir.parent == tmp_path / "shapes"
    assert plan.run_dir.name.startswith("spatial-prompt=none+")
    assert plan.action == "train"
    # eval-only choices and eval overrides do not change the training run
    default = plan_ablation([], runs_root=tmp_path).run_dir
    assert plan_ablation(["box-source=gt", "eval.batch_size=4"], runs_root=tmp_path).run_dir == default
    assert default.name == "default"


@pytest.mark.slow
def test_train_then_reuse_with_gt_boxes(shapes_root, tmp_path):
    args = [f"data.root={shapes_root}", *QUICK]
    plan = plan_ablation(args, runs_root=tmp_path)
    result = run_ablation(plan)
    assert result.train_result.steps == 2
    metrics = json.loads((plan.run_dir / "eval" / "shapes_val" / "metrics.json").read_text())
    assert metrics["box_source"] == "predicted" and metrics["count"] > 0

    oracle = plan_ablation([*args, "box-source=gt"], runs_root=tmp_path)
    assert oracle.run_dir == plan.run_dir and oracle.action == "reuse"
    reused = run_ablation(oracle)
    assert reused.train_result is None
    gt = json.loads((plan.run_dir / "eval-gt" / "shapes_val" / "metrics.json").read_text())
    assert gt["box_source"] == "gt" and gt["count"] == metrics["count"]


def test_an_unknown_device_fails_before_training(shapes_root, tmp_path):
    plan = plan_ablation([f"data.root={shapes_root}", *QUICK], runs_root=tmp_path)
    with pytest.raises(PPCRError, match="unknown device 'tpu'"):
        run_ablation(plan, device="tpu")
    assert not plan.run_dir.exists()


def test_a_run_of_another_recipe_is_not_silently_reused(shapes_root, tmp_path):
    args = [f"data.root={shapes_root}", *QUICK]
    plan = plan_ablation(args, runs_root=tmp_path)
    plan.run_dir.mkdir(parents=True)
    (plan.run_dir / "recipe.yaml").write_text("seed: 999\n")
    with pytest.raises(PPCRError, match="different recipe"):
        plan_ablation(args, runs_root=tmp_path)


def test_cli_list_and_bad_axis(tmp_path):
    result = run("ablate", "--list")
    assert result.returncode == 0 and "spatial-prompt" in result.stdout and "Oracle" in result.stdout
    _assert_one_line_error(run("ablate", "spatial-head=transformer", "--runs", str(tmp_path)), 1, "unknown value")
