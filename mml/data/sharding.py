"""Which videos each training process reads: sharded batches and validation shards.

Data-layer samplers for DistributedDataParallel runs (mml/distributed.py owns the process group;
these need only a rank and a world size), used by `mml.data.dataset.make_loader`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from mml import seeds


class ShardedBatches:
    """Batch sampler: rank `rank`'s contiguous slice of each global batch of a shuffled epoch.

    The global batches are exactly those of a single-process `DataLoader(shuffle=True,
    generator=seeds.epoch_order(seed, epoch))` (tests check this), so N processes see what one
    process would. A last global batch smaller than N is dropped (every process must step).
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, epoch: int, rank: int, size: int):
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.rank, self.size = rank, size

    def global_batches(self) -> list[list[int]]:
        g = seeds.epoch_order(self.seed, self.epoch)
        # DataLoader draws its workers' base seed from the generator before the sampler's
        # permutation; drawing it here too keeps the single-process order.
        torch.empty((), dtype=torch.int64).random_(generator=g)
        order = torch.randperm(self.n, generator=g).tolist()
        batches = [order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        return [b for b in batches if len(b) >= self.size]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield np.array_split(np.asarray(batch), self.size)[self.rank].tolist()

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (rest >= self.size and rest > 0)


def shard_indices(n: int, rank: int, size: int) -> list[int]:
    """Rank `rank`'s contiguous share of range(n) (validation: concatenated in rank order)."""
    return np.array_split(np.arange(n), size)[rank].tolist()
