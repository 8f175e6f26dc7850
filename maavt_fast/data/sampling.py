"""Seeded randomness and epoch order: every random choice is a function of (seed, epoch, sample index).

This makes a run independent of worker count and process layout, and lets a resumed run replay exactly
the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import numpy as np

_TRAIN_STREAM, _ORDER_STREAM, _SPLIT_STREAM = 1, 2, 3


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for all random choices of sample `index` in `epoch`."""
    return np.random.default_rng([_TRAIN_STREAM, seed, epoch, index])


def split_rng(seed: int) -> np.random.Generator:
    """The generator that draws the held-out validation clips (fixed for a seed)."""
    return np.random.default_rng([_SPLIT_STREAM, seed])


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Sample order of one epoch over `n` samples: a seeded permutation, or 0..n-1."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([_ORDER_STREAM, seed, epoch]).permutation(n)


def shard(order: np.ndarray, rank: int, world_size: int, drop_last: bool) -> tuple[np.ndarray, np.ndarray]:
    """This rank's slice of `order`, like DistributedSampler: (indices, valid).

    drop_last: the tail that does not divide by world_size is dropped. Otherwise the order is padded by
    wrapping around so every rank gets the same count; padded entries have valid=False so metrics can
    ignore the duplicates.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    n = len(order)
    if drop_last:
        total = (n // world_size) * world_size
        padded, valid = order[:total], np.ones(total, dtype=bool)
    else:
        total = -(-n // world_size) * world_size
        padded = np.resize(order, total) if n else order
        valid = np.arange(total) < n
    return padded[rank::world_size], valid[rank::world_size]
