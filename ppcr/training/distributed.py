"""Process groups, rank helpers and the two ways ``--nproc N`` starts N local processes.

What runs where
---------------
* **GPU** (the paper's setting): NCCL, one process per GPU, started by DeepSpeed's own launcher
  (``deepspeed --num_gpus N [--num_nodes M --hostfile H] --module ppcr.training.worker spec.json``,
  built by :func:`deepspeed_launch_command`). Each rank finds ``RANK``/``WORLD_SIZE``/
  ``LOCAL_RANK``/``MASTER_*`` in its environment. ``torchrun`` sets the same variables, so
  ``torchrun --nproc_per_node N`` works too.
* **CPU** (tests, the tiny model): gloo, ranks started with ``torch.multiprocessing`` spawn by
  :func:`spawn_local`, meeting through a rendezvous file rather than a TCP port (DeepSpeed's
  launcher also works on CPU; the tests cover both).
* ``nproc == 1`` runs in the calling process; its one-member group is kept for the life of the
  process, because DeepSpeed caches its process groups in module globals and cannot be
  re-initialised after ``destroy_process_group``.

On CPU, DeepSpeed's communication backend would JIT-compile a shared-memory all-reduce C++ op
(``deepspeed_shm_comm``, about 30 s here, and it needs a compiler) the first time a group is created; it is
switched off so plain gloo is used.
"""

from __future__ import annotations

import os
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Set by spawn_local: rendezvous through a file instead of a TCP port picked in advance, which
# another process on a busy machine could take between the pick and the bind.
RENDEZVOUS_VARIABLE = "PPCR_RENDEZVOUS"


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: str  # "cpu" or "cuda:<local_rank>"
    backend: str  # "gloo" or "nccl"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]


def device_type() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def launched_externally() -> bool:
    """True inside a process started by ``deepspeed``/``torchrun`` (rank variables are set)."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def external_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def free_port() -> int:
    """A TCP port that is free right now on localhost (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rank_environment(rank: int, world_size: int, port: int, addr: str = "127.0.0.1") -> dict[str, str]:
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world_size),
        "MASTER_ADDR": addr,
        "MASTER_PORT": str(port),
    }


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


class _DropSchedulerStartWarning:
    """DeepSpeed warns on every run that its scheduler is read "before it has started" (its own init)."""

    def filter(self, record) -> bool:
        return "before it has started" not in record.getMessage()


def _prepare_deepspeed_for(device: str) -> None:
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import logging

    import deepspeed.ops

    logger = logging.getLogger("DeepSpeed")
    logger.setLevel(logging.WARNING)
    if not any(isinstance(f, _DropSchedulerStartWarning) for f in logger.filters):
        logger.addFilter(_DropSchedulerStartWarning())
    if device == "cpu":
        # The probe result is cached in one module-level dict (deepspeed/ops/__init__.py: "edits to
        # it persist"); marking the op incompatible makes TorchBackend use plain gloo collectives.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed(kind: str | None = None, *, with_deepspeed: bool = True) -> DistEnv:
    """Join (or create) the process group described by the rank environment variables.

    The variables must already be set (by a launcher, :func:`spawn_local`, or the caller for
    ``nproc == 1``). An existing group is reused. ``kind`` (``cpu``/``cuda``, default: CUDA when
    visible) picks the device and backend (gloo/NCCL); ``with_deepspeed=False`` (evaluation)
    joins with plain ``torch.distributed`` and never imports DeepSpeed.
    """
    import torch
    import torch.distributed as dist

    kind = kind or device_type()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = "nccl" if kind == "cuda" else "gloo"
    device = f"cuda:{local_rank}" if kind == "cuda" else "cpu"
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
    if with_deepspeed:
        _prepare_deepspeed_for(kind)

    if dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise RuntimeError(
                f"a process group (rank {dist.get_rank()} of {dist.get_world_size()}) already exists; "
                f"cannot join as rank {rank} of {world_size}"
            )
    elif os.environ.get(RENDEZVOUS_VARIABLE):
        dist.init_process_group(
            backend, init_method=os.environ[RENDEZVOUS_VARIABLE], rank=rank, world_size=world_size
        )
    elif not with_deepspeed:
        dist.init_process_group(backend, rank=rank, world_size=world_size)  # env:// (MASTER_ADDR/PORT)
    if with_deepspeed:
        import deepspeed

        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device, backend=backend)


# ----------------------------------------------------------------------------- collectives


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor):
    """Sum a tensor over ranks in place (no-op for one rank) and return it."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order (a one-element list for one rank)."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` on every rank."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# ----------------------------------------------------------------------------- launching


def _spawned_rank(
    local_rank: int, world_size: int, rendezvous: str, target: Callable[..., None], args: tuple
) -> None:
    os.environ.update(rank_environment(local_rank, world_size, port=0))
    os.environ[RENDEZVOUS_VARIABLE] = rendezvous
    target(*args)


def spawn_local(target: Callable[..., None], nproc: int, args: tuple = (), *, rendezvous_dir: str) -> None:
    """Run ``target(*args)`` in ``nproc`` fresh processes (spawn), each with its rank environment.

    The ranks meet through a file in ``rendezvous_dir`` (empty, private to this launch).
    ``target`` and ``args`` must be picklable (top-level functions, plain data). Returns when all
    processes have finished; if one fails the others are terminated and
    ``torch.multiprocessing.ProcessRaisedException`` / ``ProcessExitedException`` is raised.
    """
    import torch.multiprocessing as mp

    rendezvous = "file://" + os.path.join(os.path.abspath(rendezvous_dir), "rendezvous")
    mp.start_processes(
        _spawned_rank,
        args=(nproc, rendezvous, target, args),
        nprocs=nproc,
        join=True,
        start_method="spawn",
    )


def deepspeed_launch_command(
    module: str,
    module_args: Sequence[str],
    nproc: int,
    *,
    num_nodes: int | None = None,
    hostfile: str | None = None,
    master_port: int | None = None,
    master_addr: str | None = None,
    python: str | None = None,
) -> list[str]:
    """The command that starts ``python -m <module> <module_args>`` once per GPU with DeepSpeed's launcher.

    ``nproc`` is processes per node (``--num_gpus``); multi-node runs add ``--num_nodes`` and an
    MPI-style ``--hostfile`` (``worker-0 slots=8``), and need the run directory on a shared file
    system. ``--no_local_rank`` because ranks read ``LOCAL_RANK`` from the environment.
    """
    command = [python or sys.executable, "-u", "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc)]
    if num_nodes is not None:
        command += ["--num_nodes", str(num_nodes)]
    if hostfile is not None:
        command += ["--hostfile", str(hostfile)]
    if master_addr is not None:
        command += ["--master_addr", master_addr]
    command += ["--master_port", str(master_port if master_port is not None else free_port())]
    command += ["--no_local_rank", "--module", module, *module_args]
    return command
