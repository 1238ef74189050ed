"""One split scored by several processes: whole batches per rank, every sentence's row gathered.

Why batches, not single images: an evaluation packs whole images' sentences into batches of at
most ``batch_size`` sentences (``evaluate._grouped_batches``; the naive mode cuts the sentence list
into batches). Handing each rank whole batches of exactly that list, round robin (rank r takes
batches r, r + N, r + 2N, ...), keeps the grouping by image, and every rank computes the same
batches, with the same padding and shapes, as a single process would: the gathered rows are the
single run's rows, so ``metrics.json`` and ``per_sentence.csv`` come out the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ppcr.errors import PPCRError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place among the ``world_size`` processes scoring a split together."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise PPCRError(f"invalid shard: rank {self.rank} of {self.world_size} processes")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def take(self, batches: Sequence[T]) -> list[T]:
        """This rank's share of ``batches`` (every ``world_size``-th, starting at ``rank``)."""
        return list(batches[self.rank :: self.world_size])

    def gather(self, local: dict[int, Any]) -> dict[int, Any]:
        """Every rank's ``{reader position: value}`` merged (positions are disjoint), on every rank."""
        if self.world_size == 1:
            return dict(local)
        from ppcr.training.distributed import all_gather_objects

        merged: dict[int, Any] = {}
        for part in all_gather_objects(local):
            merged.update(part)
        return merged
