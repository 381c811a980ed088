"""The single-process reference of a data-parallel run: the same global batches that ``nproc`` ranks take together.

Rank ``r`` of ``N`` reads ``DistributedSampler(rank=r, seed=s)``'s shard of epoch ``e`` (the permutation of
``s + e``, padded to a multiple of ``N``) in steps of ``batch / N``; global step ``j`` is the union of the ranks'
step ``j``. DDP averages the ranks' mean gradients over equal shards, which is the mean gradient over that union, so
one process fed these batches computes the same updates up to float summation order — also when the training set's
size is odd and the sampler repeats a sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from torch.utils.data import DataLoader, DistributedSampler, Sampler

from deepslim.data import LOADER_PREPROCESSING_ATTR


class GlobalBatches(Sampler[list[int]]):
    """Batches of indices: epoch ``e``'s global steps of ``nproc`` ranks (a batch sampler; it moves on by itself)."""

    def __init__(self, dataset, *, nproc: int, seed: int, batch: int):
        self.dataset, self.nproc, self.seed, self.per_rank = dataset, nproc, seed, batch // nproc
        self.epoch = 0

    def _shards(self) -> list[list[int]]:
        shards = []
        for rank in range(self.nproc):
            sampler = DistributedSampler(self.dataset, num_replicas=self.nproc, rank=rank, shuffle=True, seed=self.seed)
            sampler.set_epoch(self.epoch)
            shards.append(list(sampler))
        return shards

    def __iter__(self) -> Iterator[list[int]]:
        shards = self._shards()
        self.epoch += 1
        for start in range(0, len(shards[0]), self.per_rank):
            yield [i for shard in shards for i in shard[start:start + self.per_rank]]

    def __len__(self) -> int:
        return -(-len(self._shards()[0]) // self.per_rank)


def reference_data(data, *, nproc: int, seed: int):
    """``data`` with its training loader replaced by the global batches of ``nproc`` ranks trained with ``seed``."""
    loader = data.train
    batches = GlobalBatches(loader.dataset, nproc=nproc, seed=seed, batch=loader.batch_size)
    train = DataLoader(loader.dataset, batch_sampler=batches, collate_fn=loader.collate_fn)
    setattr(train, LOADER_PREPROCESSING_ATTR, getattr(loader, LOADER_PREPROCESSING_ATTR, None))
    return dataclasses.replace(data, train=train)
