"""Batch plans: which example indices form each batch, for each rank.

The plan depends only on (n, batch size, seed, epoch), not on the global RNG, so a resumed run sees
the same batches as an uninterrupted one. Under DDP each global batch (the recipe's batch size) is
cut into equal contiguous slices, one per rank, so gradient averaging equals the 1-process batch."""

from __future__ import annotations

import torch

from mmbench.engine.runtime import World


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool, drop_last: bool = False) -> list[list[int]]:
    if shuffle:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=generator).tolist()
    else:
        order = list(range(n))
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def rank_slice(batch: list[int], world: World) -> list[int]:
    if not world.distributed:
        return batch
    per_rank = -(-len(batch) // world.size)
    return batch[world.rank * per_rank : (world.rank + 1) * per_rank]


def eval_shard(n: int, world: World) -> list[int]:
    """This rank's evaluation indices: a strided shard, no padding, no duplicates."""
    return list(range(world.rank, n, world.size))
