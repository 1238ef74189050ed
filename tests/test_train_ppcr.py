"""`ppcr train` on the real (tiny) PPCR model and Shapes-Ref: it learns, ranks agree, resume is exact."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from ppcr.config.loading import load_recipe
from ppcr.data.shapes import generate_shapes_ref
from ppcr.training.ppcr_task import ReferTrainDataset
from ppcr.training.run import train
from tests.test_cli import _assert_one_line_error, run


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_ref(root, seed=1, images=30)
    return root


def small_recipe(root, *overrides):
    return load_recipe(
        "shapes",
        [f"data.root={root}", "data.datasets=shapes", "train.batch_size=8", "train.micro_batch_size=4",
         "train.warmup_steps=2", "train.log_every=1", "train.save_every=4", *overrides],
    )


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def trainable(run_dir):
    heads = load_file(str(run_dir / "final" / "heads.safetensors"))
    adapters = {
        f"{name}.{key}": value
        for name in ("semantic", "spatial")
        for key, value in load_file(str(run_dir / "final" / name / "adapter_model.safetensors")).items()
    }
    return {**heads, **adapters}


def test_items_are_deterministic_per_epoch_and_index(shapes_root):
    dataset = ReferTrainDataset(small_recipe(shapes_root))
    first = dataset[3]
    assert first.mask.shape == (first.image.height, first.image.width) and first.mask.any()
    assert dataset[3].template_seed == first.template_seed
    dataset.set_epoch(1)
    assert dataset[3].template_seed != first.template_seed


def test_image_groups_gather_every_sentence_of_an_image_across_datasets(shapes_root):
    dataset = ReferTrainDataset(small_recipe(shapes_root, "data.datasets=[shapes, shapes+]"))
    groups = dataset.image_groups()
    assert sorted(i for group in groups for i in group) == list(range(len(dataset)))
    first = dataset.offsets[1]  # where shapes+ starts

    def path_of(index):
        return (dataset.parts[0][index] if index < first else dataset.parts[1][index - first]).image_path

    paths = [{path_of(i) for i in group} for group in groups]
    assert all(len(p) == 1 for p in paths)  # one image per group …
    all_images = {path_of(i) for i in range(len(dataset))}
    assert len({next(iter(p)) for p in paths}) == len(groups) == len(all_images)  # … one group per image
    assert all({i < first for i in g} == {True, False} for g in groups)  # both datasets
    assert dataset[groups[0][0]].image_key == dataset[groups[0][1]].image_key  # encoded once per batch


@pytest.mark.slow
def test_a_few_steps_lower_the_loss_and_export_a_loadable_checkpoint(shapes_root, tmp_path):
    recipe = small_recipe(shapes_root, "train.max_steps=24", "train.lr=3e-3")
    result = train(recipe, tmp_path / "run", progress=False)
    assert result.steps == 24
    history = losses(tmp_path / "run")
    assert all(math.isfinite(v) for v in history)
    assert sum(history[-4:]) / 4 < 0.8 * sum(history[:4]) / 4, history
    from ppcr.modeling.model import PPCRModel

    model = PPCRModel.from_pretrained(tmp_path / "run" / "final")
    assert model.spec.spatial_prompt == "semantic"
    saved = (tmp_path / "run" / "recipe.yaml").read_text()
    assert f"root: {shapes_root}" in saved


@pytest.mark.slow
def test_two_processes_hold_identical_weights(shapes_root, tmp_path):
    recipe = small_recipe(shapes_root, "train.max_steps=3")
    result = train(recipe, tmp_path / "two", nproc=2, launcher="spawn", progress=False)
    assert result.world_size == 2
    assert len(set(result.weight_digests)) == 1


@pytest.mark.slow
def test_mllm_lr_applies_to_the_mllm_and_only_to_it(shapes_root, tmp_path):
    from ppcr.modeling.model import PPCRModel
    from ppcr.training.ppcr_task import build_train_model

    recipe = small_recipe(shapes_root, "train.max_steps=3", "train.lr=3e-3", "train.mllm_lr=1e-12")
    train(recipe, tmp_path / "run", progress=False)
    torch.manual_seed(recipe.seed)  # the trainer builds the model from the same seed
    start = build_train_model(recipe).model.state_dict()
    end = PPCRModel.from_pretrained(tmp_path / "run" / "final").state_dict()

    def moved(prefix: str) -> float:
        return max((end[k] - start[k]).abs().max().item() for k in start if k.startswith(prefix))

    assert moved("llm.") < 1e-6 and moved("token_rows.") < 1e-6  # LLaVA incl. LoRA: at 1e-12
    assert moved("box_head.") > 1e-4 and moved("sam.mask_decoder.") > 1e-4  # the rest: at lr
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    heads, mllm = rows[-1]["group_lrs"]
    assert heads == rows[-1]["lr"] and mllm == pytest.approx(heads * 1e-12 / 3e-3)  # same schedule


class _Interrupt(Exception):
    pass


def _interrupt_at(step: int):
    def on_log(row):
        if row["step"] == step:
            raise _Interrupt(f"simulated crash at step {step}")

    return on_log


@pytest.mark.slow
def test_interrupted_and_resumed_run_ends_with_the_same_weights(shapes_root, tmp_path):
    # Grouped sentences repeat an image within a batch: its backward must still be deterministic.
    recipe = small_recipe(shapes_root, "train.max_steps=8", "data.sentences_per_image=4")
    train(recipe, tmp_path / "full", progress=False)
    with pytest.raises(_Interrupt):  # dies after step 6; the last saved state is step 4's
        train(recipe, tmp_path / "cut", progress=False, on_log=_interrupt_at(6))
    assert not (tmp_path / "cut" / "final").exists()
    result = train(recipe, tmp_path / "cut", resume=True, progress=False)
    assert result.resumed_from_step == 4 and result.steps == 8
    assert losses(tmp_path / "cut") == pytest.approx(losses(tmp_path / "full"), rel=1e-5)
    a, b = trainable(tmp_path / "full"), trainable(tmp_path / "cut")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_bad_recipe_or_override_fails_before_any_work(tmp_path):
    out = tmp_path / "run"
    _assert_one_line_error(run("train", "--recipe", "shapez", "--out", str(out)), 1, "unknown recipe")
    _assert_one_line_error(run("train", "train.lrr=1", "--out", str(out)), 1, "unknown key 'train.lrr'")
    _assert_one_line_error(run("train", "train.batch_size=7", "--out", str(out)), 1, "batch")
    _assert_one_line_error(
        run("train", f"data.root={tmp_path / 'nowhere'}", "--out", str(out)), 1, "not found"
    )
    _assert_one_line_error(
        run("train", "model.tiny.clip_hidden=66", "--out", str(out)), 1, "model.tiny.clip_hidden: 66 is not divisible"
    )
    _assert_one_line_error(run("train", "loss.l1=-1", "--out", str(out)), 1, "loss.l1: must be a finite weight")
    _assert_one_line_error(run("train", "loss.ce=nan", "--out", str(out)), 1, "loss.ce: must be a finite weight")
    assert not out.exists()


@pytest.mark.slow
def test_deepspeed_launcher_with_two_ranks_matches_one_process(shapes_root, tmp_path):
    """DeepSpeed's own launcher (the GPU path's process layout) on CPU, against a one-process run.

    Its ranks read a spec of data only and train PPCR. The micro-batches (and so the sampled
    templates) are the same for any world size, so 1 and 2 processes compute the same updates up
    to float summation order. (``head_norm: none``: batch-norm running statistics are each rank's
    own, so they would legitimately differ.)
    """
    recipe = small_recipe(shapes_root, "train.max_steps=3", "train.save_every=100", "model.head_norm=none")
    two = train(recipe, tmp_path / "two", nproc=2, launcher="deepspeed", progress=False)
    train(recipe, tmp_path / "one", progress=False)
    assert two.world_size == 2 and two.weight_digests[0] == two.weight_digests[1]
    assert json.loads((tmp_path / "two" / "env.json").read_text())["launcher"] == "deepspeed"
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)
    a, b = trainable(tmp_path / "two"), trainable(tmp_path / "one")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
