"""The trainer: setup → train → save → cleanup, for any model that follows the contract below.

Model contract (the PPCR model and the tests' stand-in both follow it):

* ``build_model(recipe) -> nn.Module`` (:class:`~ppcr.training.request.TrainTask`; PPCR's is
  :mod:`ppcr.training.ppcr_task`); ``model(batch)`` returns an object with ``.loss`` (the
  weighted total, a scalar tensor) and ``.losses`` (a dict of unweighted scalar terms, the same
  keys every call), optionally ``.metrics`` (a dict of scalars that are logged, not optimised,
  e.g. PPCR's ``patch_acc``). The model casts floating inputs to its own dtype (DeepSpeed casts the module
  to bf16/fp16 in those precisions, never the batch).
* ``model.save_pretrained(directory, state_dict=None)`` writes a self-contained checkpoint
  (from ``state_dict`` when given, whose keys are ``model.state_dict()``'s); its
  ``from_pretrained(directory)`` reads it back with no DeepSpeed involved.
* Trainable parameters are those with ``requires_grad``; frozen ones must be rebuilt identically
  by ``build_model`` (they are not part of the resumable state).
* Optional ``model.is_mllm_parameter(name)``: which parameters ``train.mllm_lr`` applies to.

Per optimizer step, each rank runs ``grad_accum`` micro-batches (forward, finiteness check,
``engine.backward``, ``engine.step``; DeepSpeed applies the update at the last one). The
finiteness check sums ``[loss, *terms]`` over ranks first, so every rank sees a NaN that any rank
produced and all stop together, before that micro-batch's backward: the weights, the last
checkpoint and the last training state stay those of the last good step. A finite loss says
nothing of the update that follows it, so before each save the updated trainable weights are
checked too: non-finite ones stop the run unsaved, and a saved checkpoint is always finite.
"""

from __future__ import annotations

import gc
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppcr.config.schema import Recipe
from ppcr.training.checkpointing import (
    check_export_contract,
    clean_run_temporaries,
    consolidated_state_dict,
    export_pretrained,
    load_training_state,
    non_finite_parameters,
    restore_rng_state,
    save_training_state,
    step_tag,
    trainable_digest,
)
from ppcr.training.data import ResumableDistributedSampler, build_dataloader, move_to_device
from ppcr.training.deepspeed_config import build_deepspeed_config, resolve_precision
from ppcr.training.distributed import DistEnv, all_gather_objects, all_reduce_sum, barrier
from ppcr.training.errors import NonFiniteLossError, NonFiniteWeightsError, TrainingError
from ppcr.training.layout import CHECKPOINTS_DIR, FINAL_DIR, METRICS_FILE, RECIPE_FILE, STATE_DIR
from ppcr.training.metrics import MetricsLog, collect_env, truncate_metrics, write_env
from ppcr.training.param_groups import optimizer_groups
from ppcr.training.plan import TrainingPlan, make_plan
from ppcr.training.request import RunRequest
from ppcr.training.result import TrainResult

# Metrics travel beside the loss terms in one reduced vector, their names under this prefix.
METRIC_PREFIX = "metric:"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _scalar(value: Any, device: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=device, dtype=torch.float64).reshape(())
    return torch.tensor(float(value), dtype=torch.float64, device=device)


class Trainer:
    """One rank's training run. Call :meth:`setup`, :meth:`train`, then (always) :meth:`cleanup`."""

    def __init__(self, request: RunRequest, dist_env: DistEnv):
        self.request = request
        self.recipe = request.recipe
        self.dist = dist_env
        self.run_dir = Path(request.out_dir)
        self.engine = None
        self.metrics: MetricsLog | None = None
        self.start_step = 0
        self.step = 0
        self.last_saved_step: int | None = None
        self.term_names: list[str] | None = None

    # ------------------------------------------------------------------------- setup

    def setup(self) -> None:
        # Under an external launcher every rank ran the run-directory checks on its own; nobody
        # writes until all of them have.
        barrier()
        train = self.recipe.train
        task = self.request.resolved_task()
        self.collate_fn = task.collate

        self.dataset = task.build_dataset(self.recipe)
        self.plan: TrainingPlan = make_plan(train, self.dist.world_size, len(self.dataset))
        self.image_groups = None
        if self.recipe.data.sentences_per_image > 1:
            if not hasattr(self.dataset, "image_groups"):
                raise TrainingError(
                    f"data.sentences_per_image={self.recipe.data.sentences_per_image} needs a dataset "
                    f"with image_groups(); {type(self.dataset).__name__} has none"
                )
            self.image_groups = self.dataset.image_groups()
        self.precision = resolve_precision(train.precision, self.dist.device_type)

        seed_everything(self.recipe.seed)  # identical model construction on every rank and on resume
        model = task.build_model(self.recipe)
        check_export_contract(model, self.precision)
        self.trainable_names = [name for name, p in model.named_parameters() if p.requires_grad]
        if not self.trainable_names:
            raise TrainingError(f"{type(model).__name__} has no trainable parameters")

        # The first file of a run is written only once data, plan and model are known to be good.
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            clean_run_temporaries(self.run_dir)
            if not self.request.resume:
                # A fresh start: any metrics here are an abandoned start's (check_run_dir allowed it).
                (self.run_dir / METRICS_FILE).unlink(missing_ok=True)
                _save_recipe(self.recipe, self.run_dir / RECIPE_FILE)
        barrier()

        import deepspeed

        groups = optimizer_groups(model, train)
        self.ds_config = build_deepspeed_config(train, self.plan, self.precision, [g["lr"] for g in groups])
        self.engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=self.ds_config)

        resumed_from: int | None = None
        if self.request.resume:
            tag, client = load_training_state(self.engine, self.run_dir / STATE_DIR, self.trainable_names)
            self._check_resumable(client, tag)
            self.start_step = resumed_from = int(client["step"])
            self.last_saved_step = self.start_step
            restore_rng_state(client["rng"][self.dist.rank])
        else:
            seed_everything(self.recipe.seed + self.dist.rank)  # per-rank stream (dropout etc.)
        self.step = self.start_step

        if self.dist.is_main:
            if self.request.resume:
                truncate_metrics(self.run_dir / METRICS_FILE, self.start_step)
            write_env(
                self.run_dir,
                collect_env(
                    seed=self.recipe.seed,
                    world_size=self.dist.world_size,
                    device=self.dist.device,
                    backend=self.dist.backend,
                    launcher=self.request.launcher,
                    precision=self.precision,
                    requested_precision=train.precision,
                    zero_stage=train.zero_stage,
                    plan=self.plan.as_dict(),
                    deepspeed_config=self.ds_config,
                    trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
                    total_parameters=sum(p.numel() for p in model.parameters()),
                    resumed_from_step=resumed_from,
                    **self.request.extra_env,
                ),
            )
            self.metrics = MetricsLog(
                self.run_dir,
                total_steps=self.plan.total_steps,
                start_step=self.start_step,
                show_progress=self.request.show_progress,
                on_log=self.request.on_log,
            )
        self.resumed_from = resumed_from

    def _check_resumable(self, client: dict[str, Any], tag: str) -> None:
        expected = {
            "world_size": self.dist.world_size,
            "num_samples": self.plan.num_samples,
            "batch_size": self.plan.batch_size,
            "micro_batch_size": self.plan.micro_batch_size,
            "total_steps": self.plan.total_steps,
            "seed": self.recipe.seed,
        }
        for key, value in expected.items():
            if client.get(key) != value:
                raise TrainingError(
                    f"cannot resume from {STATE_DIR}/{tag}: it was written with {key}={client.get(key)}, "
                    f"this run has {key}={value}",
                    hint="resume with the same recipe, data and --nproc as the interrupted run",
                )
        if self.engine.global_steps != int(client["step"]):
            raise TrainingError(
                f"training state {STATE_DIR}/{tag} is inconsistent: "
                f"DeepSpeed step {self.engine.global_steps}, "
                f"ppcr step {client['step']}"
            )

    # ------------------------------------------------------------------------- train

    def train(self) -> TrainResult:
        plan, engine, device = self.plan, self.engine, self.dist.device
        started = time.perf_counter()
        train_seconds = 0.0
        samples_done = 0
        window = _Window()
        last_row: dict[str, Any] = {}
        engine.train()

        while self.step < plan.total_steps:
            epoch = plan.epoch_of(self.step)
            sampler = ResumableDistributedSampler(
                plan.num_samples,
                batch_size=plan.batch_size,
                micro_batch_size=plan.micro_batch_size,
                world_size=plan.world_size,
                rank=self.dist.rank,
                seed=self.recipe.seed,
                epoch=epoch,
                start_step=self.step % plan.steps_per_epoch,
                groups=self.image_groups,
                group_size=self.recipe.data.sentences_per_image,
            )
            loader = build_dataloader(
                self.dataset,
                sampler,
                self.collate_fn,
                num_workers=self.recipe.data.num_workers,
                pin_memory=self.dist.device_type == "cuda",
            )
            batches = iter(loader)
            while self.step < plan.total_steps and self.step // plan.steps_per_epoch == epoch:
                step_started = time.perf_counter()
                lrs = [float(value) for value in engine.get_lr()]  # one per parameter group
                step_sum = None
                for micro in range(plan.grad_accum):
                    batch = move_to_device(next(batches), device)
                    output = engine(batch)
                    values = self._loss_vector(output)
                    all_reduce_sum(values)
                    if not bool(torch.isfinite(values).all()):
                        raise self._non_finite(values, micro)
                    engine.backward(output.loss)
                    engine.step()
                    step_sum = values if step_sum is None else step_sum + values
                self.step += 1
                elapsed = time.perf_counter() - step_started
                train_seconds += elapsed
                samples_done += plan.batch_size
                window.add(step_sum / (plan.grad_accum * plan.world_size), elapsed, plan.batch_size)
                if self.step % plan.log_every == 0 or self.step == plan.total_steps:
                    last_row = self._log_row(window, lrs, epoch)
                    window = _Window()
                if self.metrics is not None:
                    self.metrics.advance(self.step)
                if self.step % plan.save_every == 0 and self.step < plan.total_steps:
                    self.save(final=False)
            del batches, loader

        self.save(final=True)
        digests = all_gather_objects(trainable_digest(self.engine.module))
        return TrainResult(
            run_dir=str(self.run_dir),
            final_dir=str(self.run_dir / FINAL_DIR),
            steps=self.step,
            total_steps=plan.total_steps,
            start_step=self.start_step,
            world_size=self.dist.world_size,
            precision=self.precision,
            zero_stage=self.recipe.train.zero_stage,
            device=self.dist.device,
            samples_per_s=samples_done / train_seconds if train_seconds > 0 else 0.0,
            wall_s=time.perf_counter() - started,
            last_metrics=last_row,
            weight_digests=digests,
            resumed_from_step=self.resumed_from,
        )

    def _loss_vector(self, output: Any) -> torch.Tensor:
        loss = getattr(output, "loss", None)
        losses = getattr(output, "losses", None)
        if not isinstance(loss, torch.Tensor) or not isinstance(losses, dict):
            raise TrainingError(
                f"the model returned {type(output).__name__}; the trainer needs an object with "
                "a .loss tensor and a .losses dict"
            )
        metrics = getattr(output, "metrics", None) or {}
        values = {**losses, **{f"{METRIC_PREFIX}{k}": v for k, v in metrics.items()}}
        names = sorted(values)
        if self.term_names is None:
            self.term_names = names
        elif names != self.term_names:
            raise TrainingError(f"the model's loss terms changed from {self.term_names} to {names}")
        device = self.dist.device
        return torch.stack([_scalar(loss, device), *(_scalar(values[k], device) for k in names)])

    def _non_finite(self, summed: torch.Tensor, micro: int) -> NonFiniteLossError:
        mean = (summed / self.dist.world_size).tolist()
        names = ["loss", *(self.term_names or [])]
        parts = [f"{name}={value:.4g}" for name, value in zip(names, mean)]
        over = f" (mean over {self.dist.world_size} ranks)" if self.dist.world_size > 1 else ""
        step = self.step + 1
        return NonFiniteLossError(
            f"non-finite loss at step {step} (epoch {self.plan.epoch_of(self.step)}, micro-batch "
            f"{micro + 1}/{self.plan.grad_accum}): {', '.join(parts)}{over}; "
            "stopped before updating the weights",
            hint=f"{self._last_good()}; lower train.lr or check the data of this step",
        )

    def _last_good(self) -> str:
        if self.last_saved_step is None:
            return "no checkpoint was saved yet"
        return (
            f"the last good checkpoint is {CHECKPOINTS_DIR}/{step_tag(self.last_saved_step)} "
            "(resume from it with --resume)"
        )

    def _check_finite_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """A finite loss is computed before the update: the updated weights are checked here,
        before they are saved and called good (every rank holds the same consolidated weights,
        so all ranks decide alike)."""
        bad = non_finite_parameters(weights, self.trainable_names)
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise NonFiniteWeightsError(
                f"non-finite weights after step {self.step}: {', '.join(bad[:3])}{more} hold NaN or "
                "infinite values; stopped without saving them",
                hint=f"{self._last_good()}; lower train.lr or check the data of the last steps",
            )

    def _log_row(self, window: "_Window", lrs: list[float], epoch: int) -> dict[str, Any]:
        """One metrics row; ``lr`` is the first parameter group's, ``group_lrs`` all of them when
        there are several (``train.mllm_lr``)."""
        mean = window.mean()
        terms = dict(zip(self.term_names or [], mean[1:]))
        row = {
            "step": self.step,
            "epoch": epoch,
            "lr": lrs[0],
            "loss": mean[0],
            "losses": {name: value for name, value in terms.items() if not name.startswith(METRIC_PREFIX)},
            "samples_per_s": window.samples / window.seconds if window.seconds > 0 else 0.0,
            "steps_in_window": window.steps,
            "time": time.time(),
        }
        metrics = {
            name.removeprefix(METRIC_PREFIX): value for name, value in terms.items() if name.startswith(METRIC_PREFIX)
        }
        if metrics:
            row["metrics"] = metrics
        if len(lrs) > 1:
            row["group_lrs"] = lrs
        if self.metrics is not None:
            self.metrics.log(row)
        return row

    # ------------------------------------------------------------------------- save

    def save(self, final: bool) -> None:
        """Export (rank 0 writes) and save the resumable state of the current step (collective)."""
        state = {
            "step": self.step,
            "epoch": self.plan.epoch_of(self.step),
            "step_in_epoch": self.step % self.plan.steps_per_epoch,
            "total_steps": self.plan.total_steps,
            "steps_per_epoch": self.plan.steps_per_epoch,
            "num_samples": self.plan.num_samples,
            "batch_size": self.plan.batch_size,
            "micro_batch_size": self.plan.micro_batch_size,
            "world_size": self.dist.world_size,
            "seed": self.recipe.seed,
            "precision": self.precision,
            "recipe_name": self.recipe.name,
        }
        shown = ("step", "epoch", "total_steps", "world_size", "precision", "recipe_name")
        exported = {key: state[key] for key in shown}
        weights = consolidated_state_dict(self.engine)
        self._check_finite_weights(weights)
        if self.step % self.plan.save_every == 0:
            target = self.run_dir / CHECKPOINTS_DIR / step_tag(self.step)
            export_pretrained(self.engine, target, self.dist, exported, state=weights)
        if final:
            export_pretrained(self.engine, self.run_dir / FINAL_DIR, self.dist, exported, state=weights)
        if self.last_saved_step != self.step or final:
            save_training_state(
                self.engine,
                self.run_dir / STATE_DIR,
                self.step,
                {**state, "trainable_names": self.trainable_names},
                self.dist,
            )
        self.last_saved_step = self.step

    # ------------------------------------------------------------------------- cleanup

    def cleanup(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.engine is not None:
            destroy = getattr(self.engine, "destroy", None)
            if callable(destroy):
                destroy()
            self.engine = None
        self.dataset = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class _Window:
    """Running sums for one logging window."""

    def __init__(self) -> None:
        self.sum: torch.Tensor | None = None
        self.steps = 0
        self.seconds = 0.0
        self.samples = 0

    def add(self, values: torch.Tensor, seconds: float, samples: int) -> None:
        values = values.detach().to("cpu")
        self.sum = values if self.sum is None else self.sum + values
        self.steps += 1
        self.seconds += seconds
        self.samples += samples

    def mean(self) -> list[float]:
        if self.sum is None or self.steps == 0:
            return [math.nan]
        return (self.sum / self.steps).tolist()


def _save_recipe(recipe: Recipe, path: Path) -> None:
    from ppcr.config.loading import save_recipe

    save_recipe(recipe, path)
