"""The training order: a seeded permutation per epoch, and a seed per item for its augmentation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

import torch
from torch.utils.data import Sampler

# Multiplier of a 64-bit LCG (Knuth's MMIX): mixes (epoch seed, index) into a well-spread item seed.
_MIX = 6364136223846793005


class EpochSampler(Sampler):
    """Yields (index, item seed) in an order fixed by the epoch seed; DDP ranks take interleaved shards.

    The data a run sees is a function of set_epoch's seed alone, not of worker processes, their number or
    their history, so loader workers can persist across epochs and a resumed run sees what an uninterrupted
    one would have.
    """

    def __init__(self, num_items: int, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 limit: Optional[int] = None):
        self.num_items = num_items
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.limit = limit  # at most this many items per epoch and rank (the benchmark's short epochs)
        self.seed = 0

    def set_epoch(self, seed: int) -> None:
        """Fix the order and augmentation seeds of the next pass."""
        self.seed = seed

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_items))
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(self.num_items, generator=generator).tolist()
        if self.world_size > 1:
            # Pad by wrapping around so every rank gets as many items (as DistributedSampler does).
            total = -(-self.num_items // self.world_size) * self.world_size
            order = (order * (total // max(len(order), 1) + 1))[:total][self.rank::self.world_size]
        return order

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order()
        if self.limit is not None:
            order = [order[k % len(order)] for k in range(self.limit)]
        for index in order:
            yield index, (self.seed * _MIX + index) % 2**63

    def __len__(self) -> int:
        if self.limit is not None:
            return self.limit
        return -(-self.num_items // self.world_size) if self.world_size > 1 else self.num_items
