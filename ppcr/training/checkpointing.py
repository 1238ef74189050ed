"""Checkpoints: DeepSpeed-free exports for ``from_pretrained``, and the resumable training state.

Two things are saved, for two readers:

* **Export** (``checkpoints/step_000100/``, ``final/``): whatever the model's own
  ``save_pretrained(dir, state_dict=...)`` writes, from weights consolidated in code. With ZeRO
  stage ≤ 2 every rank holds the *full* module parameters after each step, but in bf16/fp16 runs
  they are low-precision copies; the fp32 master weights are partitioned across ranks inside the
  optimizer. :func:`consolidated_state_dict` gathers the fp32 masters of every trainable
  parameter (DeepSpeed's ``safe_get_full_fp32_param``, an all-reduce of the per-rank fragments)
  and takes frozen parameters and buffers from the module as they are. In fp32 runs the module
  parameters equal the masters.
* **Training state** (``state/step_000100/`` + ``state/latest``): DeepSpeed's
  ``save_checkpoint`` (partitioned optimizer state, scheduler, step counters) with frozen
  parameters excluded (the model factory rebuilds them), plus ppcr's client state: step, epoch,
  position in the epoch, the data-order inputs and every rank's RNG states.

Both are written under a temporary name and renamed into place when complete (see
:mod:`ppcr.io`). DeepSpeed reads its own files with ``weights_only=False``; before
handing them over, every ``.pt`` file is opened with ``weights_only=True`` and an allowlist of the
four plain DeepSpeed data classes it pickles, so a tampered state directory is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppcr.errors import CheckpointError, first_line
from ppcr.io import (
    atomic_directory,
    atomic_save_json,
    atomic_write_text,
    describe_write_failure,
    remove_stale_temporaries,
    replace_directory,
)
from ppcr.training.distributed import DistEnv, all_gather_objects, barrier, broadcast_object
from ppcr.training.errors import TrainingError
from ppcr.training.layout import STEP_TAG

LATEST = "latest"  # same file name and content (the tag) as DeepSpeed's own pointer
TRAINER_STATE = "trainer_state.json"
STATE_SUMMARY = "ppcr_state.json"  # the JSON part of the client state, readable without DeepSpeed
# DeepSpeed saves the state under this prefix + tag: every rank writes into it, so its name must be
# known to all ranks (not a random ``ppcr.io`` temporary); it is renamed to the tag once complete.
PARTIAL_PREFIX = ".partial-"
_WRITE_HINT = (
    "free disk space in the run directory (or fix its permissions), then continue with --resume "
    "from the last complete state"
)


def step_tag(step: int) -> str:
    return f"step_{step:06d}"


# ----------------------------------------------------------------------------- export


def consolidated_state_dict(engine) -> dict[str, torch.Tensor]:
    """The full model state with fp32 master values for trainable parameters.

    Collective: every rank must call it (each gets the full result). Keys are exactly
    ``engine.module.state_dict()``'s; tied parameters are gathered once.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    module = engine.module
    gathered: dict[int, torch.Tensor] = {}
    result: dict[str, torch.Tensor] = {}
    for name, value in module.state_dict(keep_vars=True).items():
        if isinstance(value, torch.nn.Parameter) and value.requires_grad:
            key = id(value)
            if key not in gathered:
                full = safe_get_full_fp32_param(value)
                gathered[key] = (full if full is not None else value).detach()
            result[name] = gathered[key]
        else:
            result[name] = value.detach()
    return result


def state_dict_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes (identical weights ⇔ identical digest)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def trainable_digest(module: torch.nn.Module) -> str:
    """Digest of the trainable parameters only (frozen weights are rebuilt by the factory, and
    hashing a 7B frozen base on every rank would cost minutes)."""
    return state_dict_digest({name: p for name, p in module.named_parameters() if p.requires_grad})


def _takes_state_dict(model: torch.nn.Module) -> bool:
    save = getattr(model, "save_pretrained", None)
    if save is None:
        return False
    return "state_dict" in inspect.signature(save).parameters


def check_export_contract(model: torch.nn.Module, precision: str) -> None:
    """Fail at setup, not hours later, if the model cannot be exported as this run needs."""
    if not callable(getattr(model, "save_pretrained", None)):
        raise TrainingError(
            f"{type(model).__name__} has no save_pretrained(directory) method",
            hint="the trainer exports checkpoints through the model's own save_pretrained",
        )
    if precision != "fp32" and not _takes_state_dict(model):
        raise TrainingError(
            f"{type(model).__name__}.save_pretrained does not accept state_dict=, so a {precision} run "
            "could only export low-precision weights",
            hint="add a state_dict parameter (save those tensors instead of the module's own)",
        )


def non_finite_parameters(state_dict: dict[str, torch.Tensor], names: list[str]) -> list[str]:
    """Which of ``names`` hold a NaN or an infinity in ``state_dict``."""
    return [name for name in names if name in state_dict and not bool(torch.isfinite(state_dict[name]).all())]


def export_pretrained(
    engine,
    target: Path,
    dist_env: DistEnv,
    trainer_state: dict[str, Any],
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model.save_pretrained`` output to ``target`` atomically (collective; rank 0 writes).

    ``state`` is :func:`consolidated_state_dict`'s result when the caller already has it.
    """
    if state is None:
        state = consolidated_state_dict(engine)
    error: str | None = None
    crash: BaseException | None = None
    if dist_env.is_main:
        model = engine.module
        try:
            with atomic_directory(target) as tmp:
                if _takes_state_dict(model):
                    model.save_pretrained(tmp, state_dict=state)
                else:
                    model.save_pretrained(tmp)
                atomic_save_json(tmp / TRAINER_STATE, trainer_state, allow_nan=True)
        except Exception as exc:  # noqa: BLE001 - classified: a failed write, or re-raised below
            failure = describe_write_failure(exc, target)
            if failure is None:
                crash, error = exc, f"rank 0 failed to export {target}"
            else:
                error = failure.message
    error = broadcast_object(error)  # every rank stops, not only the one that failed
    if crash is not None:
        raise crash
    if error:
        raise CheckpointError(error, hint=_WRITE_HINT)
    return target


# ----------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------- training state


def latest_state_tag(state_root: Path) -> str | None:
    """The tag of the newest complete training state, or None."""
    pointer = Path(state_root) / LATEST
    if not pointer.is_file():
        return None
    tag = pointer.read_text(encoding="utf-8").strip()
    return tag if tag and (Path(state_root) / tag).is_dir() else None


def save_training_state(
    engine, state_root: Path, step: int, client_state: dict[str, Any], dist_env: DistEnv, keep: int = 1
) -> Path:
    """Save DeepSpeed's resumable state for ``step`` (collective); keep the newest ``keep`` tags."""
    state_root = Path(state_root)
    tag = step_tag(step)
    partial = f"{PARTIAL_PREFIX}{tag}"
    if dist_env.is_main:
        state_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(state_root / partial, ignore_errors=True)
    barrier()
    rng_states = all_gather_objects(capture_rng_state())
    payload = {"ppcr": {**client_state, "rng": rng_states}}
    with _state_write_failures(state_root / partial, state_root / tag):
        engine.save_checkpoint(
            str(state_root), tag=partial, client_state=payload, save_latest=False, exclude_frozen_parameters=True
        )
    barrier()
    if dist_env.is_main:
        with _state_write_failures(state_root / partial, state_root / tag):
            atomic_save_json(state_root / partial / STATE_SUMMARY, client_state, allow_nan=True)
            replace_directory(state_root / partial, state_root / tag)
        atomic_write_text(state_root / LATEST, tag + "\n")
        tags = sorted(p.name for p in state_root.iterdir() if p.is_dir() and STEP_TAG.match(p.name))
        for old in tags[:-keep] if keep > 0 else []:
            if old != tag:
                shutil.rmtree(state_root / old, ignore_errors=True)
    barrier()
    return state_root / tag


@contextlib.contextmanager
def _state_write_failures(partial: Path, target: Path) -> Iterator[None]:
    """A failed write of the training state: delete the partial state, raise one clear line.

    The previous complete state (``latest``) is untouched, so ``--resume`` still works once
    there is room again. Anything that is not a failed write propagates unchanged (after the
    partial state is deleted all the same).
    """
    try:
        yield
    except Exception as exc:
        shutil.rmtree(partial, ignore_errors=True)
        failure = describe_write_failure(exc, target)
        if failure is None:
            raise
        raise CheckpointError(failure.message, hint=_WRITE_HINT) from None


def read_state_summary(state_root: Path) -> dict[str, Any] | None:
    """Step, world size and data-order facts of the newest state, without loading any tensor."""
    tag = latest_state_tag(state_root)
    if tag is None:
        return None
    path = Path(state_root) / tag / STATE_SUMMARY
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}", hint="the training state is incomplete") from None


def _deepspeed_pickle_allowlist() -> list[type]:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def verify_state_files(tag_dir: Path) -> None:
    """Refuse state files whose pickles hold more than tensors, containers and 4 DeepSpeed data classes."""
    files = sorted(Path(tag_dir).glob("*.pt"))
    if not files:
        raise CheckpointError(f"{tag_dir} holds no DeepSpeed state files", hint="the state is incomplete")
    with torch.serialization.safe_globals(_deepspeed_pickle_allowlist()):
        for path in files:
            try:
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # noqa: BLE001 - any failure means "do not trust this file"
                raise CheckpointError(
                    f"training state file {path} cannot be loaded safely: {first_line(exc)}",
                    hint="resume only from state directories written by ppcr train",
                ) from None


def load_training_state(
    engine, state_root: Path, expected_trainable: list[str]
) -> tuple[str, dict[str, Any]]:
    """Load the newest state into ``engine``; return its tag and ppcr's client state (collective)."""
    state_root = Path(state_root)
    tag = latest_state_tag(state_root)
    if tag is None:
        raise CheckpointError(f"no complete training state under {state_root}", hint="start without --resume")
    verify_state_files(state_root / tag)
    load_path, client = engine.load_checkpoint(
        str(state_root),
        tag=tag,
        load_module_strict=False,  # frozen parameters are excluded from the state on purpose
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
    )
    if load_path is None or not isinstance(client, dict) or "ppcr" not in client:
        raise CheckpointError(f"DeepSpeed could not load the training state {state_root / tag}")
    ours = client["ppcr"]
    saved = list(ours.get("trainable_names", []))
    if saved != list(expected_trainable):
        missing = sorted(set(expected_trainable) - set(saved))[:3]
        extra = sorted(set(saved) - set(expected_trainable))[:3]
        raise CheckpointError(
            f"the training state in {state_root / tag} is for a different set of trainable parameters "
            f"(missing: {missing or 'none'}, unexpected: {extra or 'none'})",
            hint="resume with the same recipe and model code that wrote the state",
        )
    return tag, ours


def clean_run_temporaries(run_dir: Path) -> None:
    """Remove leftovers of an interrupted write anywhere a checkpoint is built.

    ``ppcr.io``'s temporaries are deleted (or, for a directory swap cut between its two renames,
    the complete previous copy restored), and so is a DeepSpeed state that was still being saved.
    """
    run_dir = Path(run_dir)
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "state"):
        remove_stale_temporaries(folder)
    for partial in sorted((run_dir / "state").glob(f"{PARTIAL_PREFIX}*")):
        shutil.rmtree(partial, ignore_errors=True)
