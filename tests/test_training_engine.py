"""The training engine (``ppcr.training``) on CPU: DeepSpeed ZeRO-2, fp32, gloo, with a stand-in model.

Fast unit tests (plan, data order, atomic writes, config) come first; then real training runs:
in-process (one rank) and ``torch.multiprocessing`` spawn (two ranks); DeepSpeed's own launcher
trains PPCR only (tests/test_train_ppcr.py). The expensive runs are module-scoped fixtures shared
by the tests that inspect them.
"""

from __future__ import annotations

import json
import math
import shutil
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml

from ppcr.config.loading import recipe_from_dict, recipe_to_dict
from ppcr.config.schema import DataSpec, Recipe, TrainSpec
from ppcr.errors import CheckpointError, DataError, PPCRError, RecipeError
from ppcr.training.checkpointing import clean_run_temporaries, trainable_digest
from ppcr.training.data import ResumableDistributedSampler
from ppcr.training.metrics import progress_info
from ppcr.training.deepspeed_config import build_deepspeed_config, resolve_precision
from ppcr.training.errors import NonFiniteLossError, TrainingError, error_from_dict, error_to_dict
from ppcr.training.param_groups import optimizer_groups
from ppcr.training.plan import make_plan
from ppcr.training.result import TrainResult
from ppcr.training.run import _collect, train
from ppcr.training.launch import write_report
from tests.stand_in_model import (
    StandInConfig,
    StandInFactory,
    StandInModel,
    SyntheticRegression,
    build_dataset,
    collate,
    dataset_loss,
)

SEED = 3
STEPS = 16  # 64 samples / batch 8 × 2 epochs


def make_recipe(**train_overrides) -> Recipe:
    train = dict(
        epochs=2,
        batch_size=8,
        micro_batch_size=2,
        lr=1e-2,
        warmup_steps=2,
        save_every=4,
        log_every=1,
        precision="bf16",  # the paper's setting; CPU runs resolve it to fp32
    )
    train.update(train_overrides)
    return Recipe(name="engine-test", seed=SEED, train=TrainSpec(**train), data=DataSpec(num_workers=0))


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return StandInModel.from_pretrained(run_dir / "final").state_dict()


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=f"weights differ at {key}")


def temporaries(run_dir: Path) -> list[str]:
    """Leftovers of ppcr.io's atomic writes (``*.tmp-*``, ``*.old-*``) or of a DeepSpeed state save."""
    return [
        p.name for p in run_dir.rglob("*")
        if ".tmp-" in p.name or ".old-" in p.name or p.name.startswith(".partial-")
    ]


def never_called(recipe):
    raise AssertionError("a factory was called although the run should have failed first")


# ============================================================================ fast units


@pytest.mark.parametrize(
    "overrides, nproc, expected",
    [
        (dict(batch_size=8, micro_batch_size=3), 1, "train.batch_size: 8 is not divisible by train.micro_batch_size = 3"),
        (dict(batch_size=6, micro_batch_size=2), 2, "micro_batch_size × world size = 2 × 2 = 4"),
        (dict(warmup_steps=0), 1, "train.warmup_steps"),
        (dict(zero_stage=3), 1, "train.zero_stage"),
        (dict(lr=0.0), 1, "train.lr"),
        (dict(betas=[0.9]), 1, "train.betas"),
        (dict(max_steps=0), 1, "train.max_steps"),
        (dict(save_every=0), 1, "train.save_every"),
        (dict(mllm_lr=-1e-4), 1, "train.mllm_lr"),
        (dict(gt_box_rate=1.5), 1, "train.gt_box_rate"),
    ],
)
def test_bad_train_config_fails_before_any_work(tmp_path, overrides, nproc, expected):
    out = tmp_path / "run"
    with pytest.raises(RecipeError) as caught:
        train(make_recipe(**overrides), out, never_called, never_called, nproc=nproc, progress=False)
    assert expected in caught.value.message
    assert not out.exists()


def test_dataset_smaller_than_one_batch_fails_before_the_model_is_built(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(DataError, match="fewer than one batch"):
        train(make_recipe(), out, never_called, lambda r: SyntheticRegression(5), collate, progress=False)
    assert not out.exists()


def test_deepspeed_launcher_refuses_other_models_before_any_work(tmp_path):
    """Ranks started by DeepSpeed's launcher get data, not code: they train PPCR only."""
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="DeepSpeed's launcher trains PPCR only"):
        train(make_recipe(), out, never_called, never_called, nproc=2, launcher="deepspeed", progress=False)
    assert not out.exists()


@pytest.mark.parametrize(
    "factories, expected",
    [
        (("tests.stand_in_model:build_dataset", build_dataset), "model_factory must be a callable, got str"),
        ((never_called, "tests.stand_in_model:build_dataset"), "dataset_factory must be a callable, got str"),
        ((never_called,), "pass both model_factory and dataset_factory, or neither"),
    ],
)
def test_factories_are_callables_given_together(tmp_path, factories, expected):
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=expected):
        train(make_recipe(), out, *factories, progress=False)
    assert not out.exists()


def test_deepspeed_rank_spec_is_data_that_trains_ppcr(tmp_path):
    from ppcr.errors import PPCRError
    from ppcr.training.ppcr_task import PPCR_TASK
    from ppcr.training.request import RunRequest, TrainTask
    from ppcr.training.worker import request_from_spec, request_to_spec

    request = RunRequest(recipe=make_recipe(), out_dir=str(tmp_path / "run"), resume=True, launcher="deepspeed")
    spec = request_to_spec(request, str(tmp_path))
    assert json.loads(json.dumps(spec)) == spec  # plain JSON: nothing names code to import
    assert set(spec) == {"recipe", "out_dir", "resume", "show_progress", "launcher", "extra_env", "result_dir"}
    back, result_dir = request_from_spec(spec)
    assert result_dir == str(tmp_path) and back.resume and back.recipe == request.recipe
    assert back.task is None and back.resolved_task() is PPCR_TASK
    with pytest.raises(PPCRError, match="receive data only"):
        request_to_spec(RunRequest(make_recipe(), "run", task=TrainTask(never_called, build_dataset)), "x")


def test_sentences_per_image_below_one_fails_before_any_work(tmp_path):
    recipe = make_recipe()
    recipe.data.sentences_per_image = 0
    with pytest.raises(RecipeError, match="data.sentences_per_image: must be at least 1"):
        train(recipe, tmp_path / "run", never_called, never_called, progress=False)
    assert not (tmp_path / "run").exists()


def test_sentences_per_image_needs_a_dataset_that_knows_its_images(tmp_path):
    recipe = make_recipe()
    recipe.data.sentences_per_image = 2
    with pytest.raises(TrainingError, match="needs a dataset with image_groups"):
        train(recipe, tmp_path / "run", never_called, build_dataset, collate, progress=False)


def test_run_directory_is_never_overwritten_and_resume_needs_a_state(tmp_path):
    out = tmp_path / "run"
    (out / "state" / "step_000004").mkdir(parents=True)  # a run with a complete training state
    (out / "state" / "latest").write_text("step_000004\n")
    (out / "recipe.yaml").write_text("name: other\n")
    with pytest.raises(TrainingError, match="already holds a training run"):
        train(make_recipe(), out, never_called, never_called, progress=False)
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(make_recipe(), tmp_path / "empty", never_called, never_called, resume=True, progress=False)


def test_plan_arithmetic():
    plan = make_plan(make_recipe().train, world_size=2, num_samples=70)
    assert (plan.grad_accum, plan.steps_per_epoch, plan.total_steps) == (2, 8, 16)
    assert make_plan(make_recipe(max_steps=5).train, 1, 70).total_steps == 5


def _micro_batches(world_size: int, rank: int, epoch: int = 0, start_step: int = 0) -> list[list[int]]:
    sampler = ResumableDistributedSampler(
        30, batch_size=8, micro_batch_size=2, world_size=world_size, rank=rank, seed=SEED, epoch=epoch,
        start_step=start_step,
    )
    return list(sampler)


def test_sampler_splits_each_global_batch_across_ranks_and_micro_steps():
    per_rank = [_micro_batches(2, rank) for rank in range(2)]  # grad_accum 2 → 2 micro-batches per step
    sampler = ResumableDistributedSampler(
        30, batch_size=8, micro_batch_size=2, world_size=2, rank=0, seed=SEED, epoch=0
    )
    seen: list[int] = []
    for step in range(3):  # 30 // 8
        step_indices = [i for rank in range(2) for mb in per_rank[rank][2 * step : 2 * step + 2] for i in mb]
        assert sorted(step_indices) == sorted(sampler.global_batch(step))
        seen += step_indices
    assert len(seen) == len(set(seen)) == 24  # no sample twice in an epoch, the tail of 6 left out


def test_sampler_global_batches_do_not_depend_on_world_size():
    one = _micro_batches(1, 0)  # grad_accum 4
    two = [_micro_batches(2, rank) for rank in range(2)]
    for step in range(3):
        single = sorted(i for mb in one[4 * step : 4 * step + 4] for i in mb)
        double = sorted(i for rank in range(2) for mb in two[rank][2 * step : 2 * step + 2] for i in mb)
        assert single == double


def test_sampler_resume_yields_exactly_the_remaining_micro_batches_and_epochs_reshuffle():
    full = _micro_batches(2, 1)
    assert _micro_batches(2, 1, start_step=2) == full[2 * 2 :]
    assert _micro_batches(2, 1) == full  # deterministic
    assert _micro_batches(2, 1, epoch=1) != full


def test_grouped_order_keeps_up_to_k_sentences_of_an_image_together_and_every_sentence_once():
    # 30 samples over 9 "images" of 1..5 sentences, indices interleaved as a concatenated dataset's are
    sizes = [5, 1, 4, 3, 2, 5, 3, 4, 3]
    owner = [image for image, size in enumerate(sizes) for _ in range(size)]
    order_in = torch.randperm(30, generator=torch.Generator().manual_seed(0)).tolist()
    groups = [[order_in[i] for i in range(30) if owner[i] == image] for image in range(len(sizes))]
    image_of = {index: image for image, members in enumerate(groups) for index in members}

    def sampler(epoch=0, rank=0, world_size=1, start_step=0):
        return ResumableDistributedSampler(
            30, batch_size=6, micro_batch_size=3, world_size=world_size, rank=rank, seed=SEED, epoch=epoch,
            start_step=start_step, groups=groups, group_size=3,
        )

    def same_image_neighbours(order):
        return sum(image_of[a] == image_of[b] for a, b in zip(order, order[1:]))

    order = sampler().epoch_order()
    assert sorted(order) == list(range(30))
    # each image's sentences are cut into runs of ≤ 3 that stay together: 30 − Σ⌈size/3⌉ = 17 pairs
    assert same_image_neighbours(order) >= 30 - sum(-(-size // 3) for size in sizes) == 17
    plain = ResumableDistributedSampler(30, batch_size=6, micro_batch_size=3, world_size=1, rank=0, seed=SEED, epoch=0)
    assert same_image_neighbours(plain.epoch_order()) < 8  # a plain shuffle: ~3 by chance
    assert sampler(epoch=1).epoch_order() != order
    assert sampler().epoch_order() == order  # same on every rank and on resume
    two = [list(sampler(world_size=2, rank=rank)) for rank in range(2)]
    assert sorted(i for mb in two[0] + two[1] for i in mb) == sorted(order)  # 5 steps × 6: all 30
    assert list(sampler(start_step=2)) == list(sampler())[2 * 2 :]  # 2 micro-batches per step
    with pytest.raises(ValueError, match="exactly once"):
        ResumableDistributedSampler(
            30, batch_size=6, micro_batch_size=3, world_size=1, rank=0, seed=SEED, epoch=0,
            groups=groups[1:], group_size=3,
        )


def test_clean_run_temporaries_finds_every_kind_of_leftover(tmp_path):
    """The names below are the ones ppcr.io and save_training_state really give their temporaries."""
    run = tmp_path / "run"
    (run / "checkpoints" / "step_000004").mkdir(parents=True)
    (run / "checkpoints" / "step_000008.tmp-ab_3xy9z").mkdir()  # export cut while being built
    (run / "state" / ".partial-step_000008").mkdir(parents=True)  # DeepSpeed save cut
    (run / "state" / ".latest.tmp-k2j4m5n6").write_text("step_000008\n")  # pointer write cut
    (run / "state" / "latest").write_text("step_000004\n")
    # a crash between the two renames of a directory swap: only the complete old copy remains
    (run / "state" / "step_000004.old-0a1b2c3d").mkdir()
    (run / "state" / "step_000004.old-0a1b2c3d" / "mp_rank_00_model_states.pt").write_text("good")
    (run / ".env.tmp-q1w2e3r4.json").write_text("{")
    clean_run_temporaries(run)
    assert temporaries(run) == []
    assert (run / "state" / "step_000004" / "mp_rank_00_model_states.pt").read_text() == "good"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000004"]
    assert sorted(p.name for p in (run / "state").iterdir()) == ["latest", "step_000004"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "state"]


def test_deepspeed_config_matches_the_recipe():
    recipe = make_recipe(betas=[0.9, 0.95], weight_decay=0.01, grad_clip=1.0, zero_stage=2)
    plan = make_plan(recipe.train, world_size=2, num_samples=64)
    config = build_deepspeed_config(recipe.train, plan, resolve_precision("bf16", "cuda"))
    assert config["zero_optimization"]["stage"] == 2
    assert config["train_batch_size"] == 8 and config["gradient_accumulation_steps"] == 2
    assert config["optimizer"]["type"] == "AdamW"
    assert config["optimizer"]["params"]["betas"] == [0.9, 0.95]
    assert config["optimizer"]["params"]["weight_decay"] == 0.01
    assert config["optimizer"]["params"]["torch_adam"] is True  # no JIT-compiled FusedAdam / CPUAdam
    assert config["scheduler"]["params"] == {
        "total_num_steps": 16,
        "warmup_min_lr": 0.0,
        "warmup_max_lr": 1e-2,
        "warmup_num_steps": 2,
        "warmup_type": "linear",
    }
    assert config["gradient_clipping"] == 1.0
    assert config["bf16"]["enabled"] is True
    assert resolve_precision("bf16", "cpu") == "fp32"


def test_per_group_learning_rates_reach_the_scheduler_and_need_a_model_that_splits():
    recipe = make_recipe()
    plan = make_plan(recipe.train, world_size=1, num_samples=64)
    config = build_deepspeed_config(recipe.train, plan, "fp32", group_lrs=[1e-2, 1e-4])
    assert config["scheduler"]["params"]["warmup_max_lr"] == [1e-2, 1e-4]
    model = StandInFactory()(None)
    groups = optimizer_groups(model, recipe.train)
    assert len(groups) == 1 and groups[0]["lr"] == 1e-2
    assert len(groups[0]["params"]) == len([p for p in model.parameters() if p.requires_grad])
    with pytest.raises(TrainingError, match="does not say which parameters are the MLLM's"):
        optimizer_groups(model, make_recipe(mllm_lr=1e-4).train)


def test_progress_text_shows_every_group_lr():
    row = {"loss": 1.25, "losses": {"bce": 0.5}, "lr": 3e-3, "samples_per_s": 96.04}
    assert progress_info(row) == "loss=1.25 bce=0.5 lr=0.003 96.0 samples/s"
    assert "lr=0.003/0.0003 " in progress_info({**row, "group_lrs": [3e-3, 3e-4]})


def test_rank_errors_travel_as_their_own_class():
    original = NonFiniteLossError("non-finite loss at step 3", hint="lower the lr")
    rebuilt = error_from_dict(json.loads(json.dumps(error_to_dict(original))))
    assert type(rebuilt) is NonFiniteLossError and rebuilt.hint == "lower the lr"
    assert type(error_from_dict({"module": "os", "type": "system", "message": "x"})) is PPCRError


def test_a_rank_report_with_a_diverged_metric_reaches_the_parent(tmp_path):
    """ppcr.io refuses NaN by default; a rank's report must still carry one to the launcher."""
    result = TrainResult(
        run_dir="r", final_dir="r/final", steps=1, total_steps=1, start_step=0, world_size=1,
        precision="fp32", zero_stage=2, device="cpu", samples_per_s=0.0, wall_s=0.1,
        last_metrics={"step": 1, "loss": math.nan, "losses": {"mse": math.inf}},
    )
    write_report(tmp_path / "rank0.json", {"result": result.to_dict()})
    back = _collect(str(tmp_path), 1, launcher_failed=None)
    assert math.isnan(back.last_metrics["loss"]) and back.last_metrics["losses"]["mse"] == math.inf
    assert back.run_dir == "r" and back.steps == 1


# ============================================================================ one rank, in process


@pytest.fixture(scope="module")
def run_one(tmp_path_factory):
    """An uninterrupted single-process run with dropout (so the RNG matters on resume)."""
    out = tmp_path_factory.mktemp("one") / "run"
    rows: list[dict] = []
    result = train(make_recipe(), out, StandInFactory(dropout=0.1), build_dataset, collate, progress=False,
                   on_log=rows.append)
    return out, result, rows


@pytest.fixture(scope="module")
def crashed_one(tmp_path_factory):
    """The same run, but the first micro-batch of step 7 (forward 6×4+1) returns a NaN term."""
    out = tmp_path_factory.mktemp("crash") / "run"
    with pytest.raises(NonFiniteLossError) as caught:
        train(make_recipe(), out, StandInFactory(dropout=0.1, nan_at_forward=25), build_dataset, collate,
              progress=False)
    return out, caught.value


def test_training_lowers_the_loss_and_exports_loadable_checkpoints(run_one):
    out, result, rows = run_one
    dataset = build_dataset(make_recipe())
    torch.manual_seed(SEED)
    initial = dataset_loss(StandInFactory(dropout=0.1)(None), dataset)
    final_model = StandInModel.from_pretrained(out / "final")
    assert dataset_loss(final_model, dataset) < 0.75 * initial
    assert result.steps == STEPS and result.precision == "fp32" and result.zero_stage == 2
    assert trainable_digest(final_model) == result.weight_digests[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_000004", "step_000008", "step_000012", "step_000016"
    ]
    for checkpoint in (out / "checkpoints").iterdir():
        StandInModel.from_pretrained(checkpoint)
        assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == int(checkpoint.name[5:])
    # the frozen encoder is exported untouched, the head was trained
    torch.manual_seed(SEED)
    fresh = StandInFactory()(None).state_dict()
    torch.testing.assert_close(final_model.state_dict()["encoder.weight"], fresh["encoder.weight"])
    assert not torch.allclose(final_model.state_dict()["head.0.weight"], fresh["head.0.weight"])
    assert temporaries(out) == []


def test_metrics_env_and_recipe_are_written(run_one):
    out, result, rows = run_one
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == rows and [row["step"] for row in rows] == list(range(1, STEPS + 1))
    assert set(rows[0]["losses"]) == {"mse", "l1"} and rows[0]["samples_per_s"] > 0
    # metrics are logged beside the losses under their own names, not as loss terms
    assert all(set(row["metrics"]) == {"max_abs_error"} and row["metrics"]["max_abs_error"] >= 0 for row in rows)
    assert sum(r["loss"] for r in rows[-4:]) < sum(r["loss"] for r in rows[:4])
    # WarmupDecayLR as DeepSpeed implements it: step k uses the value for iteration k-2
    # (0 for the first two steps), linear warmup over 2, linear decay to 0 at 16.
    def expected_lr(step: int, peak=1e-2, warmup=2, total=STEPS) -> float:
        i = step - 2
        if i < 0:
            return 0.0
        return peak * (i / warmup if i < warmup else max(0.0, (total - i) / (total - warmup)))

    assert [row["lr"] for row in rows] == pytest.approx([expected_lr(row["step"]) for row in rows])
    env = json.loads((out / "env.json").read_text())
    assert env["seed"] == SEED and env["world_size"] == 1 and env["precision"] == "fp32"
    assert env["deepspeed_config"]["zero_optimization"]["stage"] == 2
    assert env["versions"]["torch"] == torch.__version__ and "commit" in env["git"]
    saved = recipe_from_dict(yaml.safe_load((out / "recipe.yaml").read_text()))
    assert recipe_to_dict(saved) == recipe_to_dict(make_recipe())


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(run_one, crashed_one):
    out, error = crashed_one
    assert "non-finite loss at step 7" in error.message
    assert "mse=nan" in error.message and "l1=" in error.message
    assert "checkpoints/step_000004" in error.hint
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000004"]
    assert not (out / "final").exists()
    assert (out / "state" / "latest").read_text().strip() == "step_000004"
    assert temporaries(out) == []
    # the kept checkpoint is the good step-4 model, identical to the uninterrupted run's
    reference = StandInModel.from_pretrained(run_one[0] / "checkpoints" / "step_000004").state_dict()
    kept = StandInModel.from_pretrained(out / "checkpoints" / "step_000004").state_dict()
    assert_same_weights(kept, reference, atol=0)


def test_resume_after_a_crash_ends_like_the_uninterrupted_run(run_one, crashed_one, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(crashed_one[0], out)
    rows: list[dict] = []
    result = train(make_recipe(), out, StandInFactory(dropout=0.1), build_dataset, collate, resume=True,
                   progress=False, on_log=rows.append)
    assert result.resumed_from_step == 4 and result.steps == STEPS
    reference_dir, reference, reference_rows = run_one
    assert_same_weights(final_weights(out), final_weights(reference_dir), atol=1e-6)
    # same data order, same dropout masks, same LR schedule position from step 5 on
    assert [r["step"] for r in rows] == list(range(5, STEPS + 1))
    assert [r["lr"] for r in rows] == [r["lr"] for r in reference_rows[4:]]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in reference_rows[4:]], abs=1e-6)
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, STEPS + 1))  # rows 5-6 of the crashed run were replaced
    env = json.loads((out / "env.json").read_text())
    assert env["resumed_from_step"] == 4 and len(env["previous_launches"]) == 1


def test_resume_refuses_a_changed_recipe_or_a_tampered_state(crashed_one, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(crashed_one[0], out)
    with pytest.raises(TrainingError, match=r"train\.lr: 0\.01 -> 0\.02"):
        train(make_recipe(lr=2e-2), out, never_called, never_called, resume=True, progress=False)
    with pytest.raises(TrainingError, match="written by 1 processes, this run has 2"):
        train(make_recipe(), out, never_called, never_called, resume=True, nproc=2, progress=False)
    # a state file whose pickle references a class outside the allowlist is never handed to DeepSpeed
    state_file = out / "state" / "step_000004" / "mp_rank_00_model_states.pt"
    torch.save({"module": {}, "payload": Fraction(1, 3)}, state_file)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        train(make_recipe(), out, StandInFactory(dropout=0.1), build_dataset, collate, resume=True,
              progress=False)


@pytest.mark.parametrize("stage", [0, 1])
def test_lower_zero_stages_run_the_same_code_path(tmp_path, stage):
    result = train(make_recipe(zero_stage=stage, max_steps=4), tmp_path / "run", StandInFactory(), build_dataset,
                   collate, progress=False)
    assert result.zero_stage == stage and result.steps == 4
    assert trainable_digest(StandInModel.from_pretrained(tmp_path / "run" / "final")) == result.weight_digests[0]


def test_bf16_export_holds_the_fp32_master_weights(tmp_path):
    """The GPU path's export, run on CPU: ZeRO-2 with bf16 module copies and fp32 masters."""
    import deepspeed

    from ppcr.training.checkpointing import check_export_contract, consolidated_state_dict, export_pretrained
    from ppcr.training.distributed import environment, free_port, init_distributed, rank_environment

    recipe = make_recipe()
    plan = make_plan(recipe.train, 1, 64)
    with environment(rank_environment(0, 1, free_port())):
        dist_env = init_distributed()
        torch.manual_seed(0)
        model = StandInModel(StandInConfig())
        engine, *_ = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=build_deepspeed_config(recipe.train, plan, "bf16"),
        )
        data = build_dataset(recipe)
        for step in range(6):
            for micro in range(plan.grad_accum):
                batch = collate([data[i] for i in range(8 * step + 2 * micro, 8 * step + 2 * micro + 2)])
                engine.backward(engine(batch).loss)
                engine.step()
        consolidated = consolidated_state_dict(engine)
        export_pretrained(engine, tmp_path / "export", dist_env, {"step": 6})
        module = dict(engine.module.named_parameters())
        engine.destroy()
    head = module["head.0.weight"]
    assert head.dtype == torch.bfloat16 and consolidated["head.0.weight"].dtype == torch.float32
    assert not torch.equal(consolidated["head.0.weight"], head.float())  # the masters carry more bits
    assert torch.equal(consolidated["head.0.weight"].to(torch.bfloat16), head)  # ...and round to the copies
    exported = StandInModel.from_pretrained(tmp_path / "export").state_dict()
    assert torch.equal(exported["head.0.weight"], consolidated["head.0.weight"])

    class NoStateDictExport(StandInModel):
        def save_pretrained(self, directory):  # type: ignore[override]
            super().save_pretrained(directory)

    with pytest.raises(TrainingError, match="does not accept state_dict="):
        check_export_contract(NoStateDictExport(StandInConfig()), "bf16")
    check_export_contract(NoStateDictExport(StandInConfig()), "fp32")


# ============================================================================ two ranks


@pytest.fixture(scope="module")
def run_two(tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "run"
    recipe = make_recipe()
    recipe.data.num_workers = 1  # also exercises DataLoader worker processes inside a rank
    result = train(recipe, out, StandInFactory(dropout=0.1), build_dataset, collate, nproc=2, progress=False)
    return out, result


@pytest.mark.slow
def test_two_processes_train_and_hold_identical_weights(run_two):
    out, result = run_two
    assert result.world_size == 2 and result.steps == STEPS
    assert len(result.weight_digests) == 2 and result.weight_digests[0] == result.weight_digests[1]
    final_model = StandInModel.from_pretrained(out / "final")
    assert trainable_digest(final_model) == result.weight_digests[0]
    torch.manual_seed(SEED)
    initial = dataset_loss(StandInFactory(dropout=0.1)(None), build_dataset(make_recipe()))
    assert dataset_loss(final_model, build_dataset(make_recipe())) < 0.75 * initial
    assert json.loads((out / "env.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_two_processes_nan_on_one_rank_stops_both_then_resume_matches(run_two, tmp_path):
    out = tmp_path / "run"
    # grad_accum is 2 with two ranks: forward 13 on rank 1 is the first micro-batch of step 7
    with pytest.raises(NonFiniteLossError) as caught:
        train(make_recipe(), out, StandInFactory(dropout=0.1, nan_at_forward=13, nan_rank=1), build_dataset,
              collate, nproc=2, progress=False)
    assert "non-finite loss at step 7" in caught.value.message
    assert "mse=nan" in caught.value.message and "(mean over 2 ranks)" in caught.value.message
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000004"]
    assert not (out / "final").exists() and temporaries(out) == []

    result = train(make_recipe(), out, StandInFactory(dropout=0.1), build_dataset, collate, resume=True,
                   nproc=2, progress=False)
    assert result.resumed_from_step == 4 and result.weight_digests[0] == result.weight_digests[1]
    assert_same_weights(final_weights(out), final_weights(run_two[0]), atol=1e-6)
