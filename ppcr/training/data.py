"""Deterministic, resumable data order for distributed training.

The order is a property of the *global* batch, not of the process layout: epoch ``e`` shuffles
all sample indices with a generator seeded from ``(seed, e)``; optimizer step ``s`` of that
epoch takes the ``s``-th slice of ``batch_size`` indices; that slice is cut into
``grad_accum × world_size`` micro-batches, micro-step ``m`` of rank ``r`` taking chunk
``m × world_size + r``. Hence

* the samples of every optimizer step are the same for any ``--nproc`` (with equal micro-batch
  sizes and a mean loss, 1 and N processes compute the same update up to float rounding);
* resuming after step ``k`` only needs ``k``: the sampler starts at that step's first chunk.

With ``groups`` (sample indices that share an image) and ``group_size`` k > 1, the epoch's order
keeps up to k sentences of one image next to each other (as LISA and GLaMM draw three sentences
per image): each image's sentences are shuffled and cut into runs of k, and the runs are shuffled.
Every sample still comes once per epoch.

Randomness *inside* a sample (e.g. which prompt template) should be derived from the sample
index and the epoch (datasets with a ``set_epoch(epoch)`` method are told the epoch), so it does
not depend on worker count or on where a run was resumed.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for the shuffle of ``epoch`` (distinct for every (seed, epoch) pair)."""
    digest = hashlib.sha256(f"ppcr-data-order:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(num_samples, generator=generator).tolist()


def grouped_permutation(groups: Sequence[Sequence[int]], group_size: int, seed: int, epoch: int) -> list[int]:
    """Every index of ``groups`` once, in runs of up to ``group_size`` from one group, runs shuffled."""
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    runs = []
    for members in groups:
        shuffled = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        runs.extend(shuffled[start : start + group_size] for start in range(0, len(shuffled), group_size))
    return [index for run in torch.randperm(len(runs), generator=generator).tolist() for index in runs[run]]


class ResumableDistributedSampler(Sampler[list[int]]):
    """This rank's micro-batches (lists of indices) for one epoch, from optimizer step ``start_step``.

    Use as a DataLoader ``batch_sampler``. Yields ``(steps_per_epoch - start_step) × grad_accum``
    lists of ``micro_batch_size`` indices; see the module docstring for the layout.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        batch_size: int,
        micro_batch_size: int,
        world_size: int,
        rank: int,
        seed: int,
        epoch: int,
        start_step: int = 0,
        groups: Sequence[Sequence[int]] | None = None,
        group_size: int = 1,
    ):
        if batch_size % (micro_batch_size * world_size):
            raise ValueError("batch_size must be a multiple of micro_batch_size × world_size")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.micro_batch_size = micro_batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.epoch = epoch
        self.grad_accum = batch_size // (micro_batch_size * world_size)
        self.steps_per_epoch = num_samples // batch_size
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside 0..{self.steps_per_epoch}")
        self.start_step = start_step
        if group_size > 1:
            if groups is None:
                raise ValueError("group_size > 1 needs the groups of sample indices that share an image")
            if sorted(i for g in groups for i in g) != list(range(num_samples)):
                raise ValueError(f"groups must hold every sample index 0..{num_samples - 1} exactly once")
        self.groups, self.group_size = groups, group_size

    def epoch_order(self) -> list[int]:
        """This epoch's order of all sample indices (the same on every rank)."""
        if self.group_size > 1:
            return grouped_permutation(self.groups, self.group_size, self.seed, self.epoch)
        return epoch_permutation(self.num_samples, self.seed, self.epoch)

    def global_batch(self, step: int) -> list[int]:
        """All sample indices of optimizer step ``step`` of this epoch (every rank, every micro-step)."""
        order = self.epoch_order()
        return order[step * self.batch_size : (step + 1) * self.batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        order = self.epoch_order()
        micro = self.micro_batch_size
        for step in range(self.start_step, self.steps_per_epoch):
            base = step * self.batch_size
            for micro_step in range(self.grad_accum):
                start = base + (micro_step * self.world_size + self.rank) * micro
                yield order[start : start + micro]

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.grad_accum


def build_dataloader(
    dataset: Dataset,
    sampler: ResumableDistributedSampler,
    collate_fn: Callable[[list[Any]], Any] | None,
    *,
    num_workers: int,
    pin_memory: bool,
) -> DataLoader:
    """A DataLoader over ``sampler``; worker seeds come from the sampler, not the global RNG.

    Drawing worker seeds from a private generator keeps the global RNG (dropout) stream the same
    whether a loader is created at an epoch start or mid-epoch after a resume.
    """
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(sampler.epoch)
    generator = torch.Generator().manual_seed(epoch_seed(sampler.seed, sampler.epoch) + sampler.rank)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=generator,
        persistent_workers=False,
    )


def move_to_device(batch: Any, device: str | torch.device) -> Any:
    """Move tensors (and objects with a ``.to(device)`` method, like PPCR batches) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(move_to_device(value, device) for value in batch)
    if hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(value, device) for value in batch))
    to = getattr(batch, "to", None)
    if callable(to):
        return to(device)
    return batch
