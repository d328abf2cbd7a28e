"""A resumable, DistributedSampler-style infinite sampler that also hands out crop seeds.

Training draws from an endless stream of epochs. Epoch ``e`` is a permutation of the dataset drawn
from ``torch.Generator().manual_seed(seed + e)`` (the same on every rank), padded to a multiple of
``world_size`` by repeating its head, and rank ``r`` takes every ``world_size``-th element from
``r`` — exactly what ``torch.utils.data.DistributedSampler`` does. Each element is a key
``(index, crop_seed)`` where ``crop_seed`` is a pure function of ``(seed, epoch, index)``; datasets
draw their random crops from it. Nothing depends on worker processes or on how far the DataLoader
prefetched, so a run resumed from ``start`` (the number of samples this rank has consumed)
yields exactly the keys the uninterrupted run would have.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

__all__ = ["ResumableSampler", "crop_seed"]

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def crop_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for the random crops of sample ``index`` in ``epoch``."""
    return _splitmix64(_splitmix64(_splitmix64(seed) ^ epoch) ^ index) >> 1


class ResumableSampler(torch.utils.data.Sampler):
    """Yields ``(index, crop_seed)`` keys forever, starting after ``start`` keys of this rank."""

    def __init__(
        self,
        dataset_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ):
        if dataset_size < 1:
            raise ValueError(f"dataset_size must be >= 1, got {dataset_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got {rank} of {world_size}")
        self.dataset_size = int(dataset_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.start = int(start)
        # samples per rank per epoch (DistributedSampler with drop_last=False pads)
        self.per_rank = math.ceil(self.dataset_size / world_size)

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's indices in ``epoch``."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.dataset_size, generator=g).tolist()
        else:
            order = list(range(self.dataset_size))
        total = self.per_rank * self.world_size
        while len(order) < total:
            order += order[: total - len(order)]
        return order[self.rank : total : self.world_size]

    def position(self, consumed: int | None = None) -> tuple[int, int]:
        """``(epoch, offset within the epoch)`` after ``consumed`` keys (default ``start``)."""
        consumed = self.start if consumed is None else consumed
        return divmod(consumed, self.per_rank)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = self.position()
        while True:
            for index in self.epoch_indices(epoch)[offset:]:
                yield (index, crop_seed(self.seed, epoch, index))
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # one epoch; the iterator itself never ends
        return self.per_rank

    def state_dict(self, consumed: int) -> dict:
        return {"seed": self.seed, "consumed": int(consumed), "world_size": self.world_size}
