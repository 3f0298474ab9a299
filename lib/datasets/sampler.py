"""The training order: a seeded permutation per epoch, and a seed per item for its augmentation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

# Multiplier of a 64-bit LCG (Knuth's MMIX): mixes (epoch seed, index) into a well-spread item seed.
_MIX = 6364136223846793005


class EpochSampler(Sampler):
    """Yields (index, item seed) in an order fixed by the epoch seed; DDP ranks take interleaved shards.

    The data a run sees is a function of the epoch seed alone, not of worker processes, their number or
    their history, so loader workers can persist across epochs and a resumed run sees what an uninterrupted
    one would have. Iterating the sampler itself gives the pass of epoch seed 0 (the test split's order).
    """

    def __init__(self, num_items: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.num_items = num_items
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size

    def _order(self, seed: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_items))
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(self.num_items, generator=generator).tolist()
        if self.world_size > 1:
            # Pad by wrapping around so every rank gets as many items (as DistributedSampler does).
            total = -(-self.num_items // self.world_size) * self.world_size
            order = (order * (total // max(len(order), 1) + 1))[:total][self.rank::self.world_size]
        return order

    def epoch(self, seed: int) -> Iterator[tuple[int, int]]:
        """The (index, item seed) pairs of the pass with epoch seed `seed`."""
        for index in self._order(seed):
            yield index, (seed * _MIX + index) % 2**63

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return self.epoch(0)

    def __len__(self) -> int:
        return -(-self.num_items // self.world_size) if self.world_size > 1 else self.num_items


class EpochBatchSampler(Sampler):
    """Batches of an EpochSampler's items for a sequence of epochs, back to back (the last batch of each may be short).

    One loader iterator then serves a whole run: its workers prepare the next epoch's first batches while the
    current epoch ends and the test pass runs, instead of starting cold at every epoch. The batches of an epoch
    are those a loader over the EpochSampler alone would give for that epoch's seed, so resuming stays exact.
    """

    def __init__(self, sampler: EpochSampler, batch_size: int):
        self.sampler = sampler
        self.batch_size = batch_size
        self.seeds: Sequence[int] = [0]

    def set_epochs(self, seeds: Sequence[int]) -> None:
        """The epoch seeds of the passes to serve, in order (a range works for long benchmark streams)."""
        self.seeds = seeds

    @property
    def batches_per_epoch(self) -> int:
        """Number of batches of one epoch."""
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for seed in self.seeds:
            batch = []
            for item in self.sampler.epoch(seed):
                batch.append(item)
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch

    def __len__(self) -> int:
        return self.batches_per_epoch * len(self.seeds)
