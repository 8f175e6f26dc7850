"""`Loader`: batches of one rank for one epoch on the CPU decode path, deterministic and resumable.

The epoch's order comes from (seed, epoch) (shuffled for train), is sharded over ranks like
DistributedSampler, cut into batches, and `start_batch` batches are skipped. Every sample's random
choices come from (seed, epoch, index) (see plan.py), so batches do not depend on worker count.
The DALI path (dali.py) subclasses `Loader`; factory.py picks one of the two.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch.utils.data import DataLoader

from maavt_fast.data.dataset import ClipDataset
from maavt_fast.data.errors import DataError
from maavt_fast.data.sampling import epoch_order, shard

@dataclass
class Batch:
    """audio (B, T, S, S), image (B, T, 3, S, S) float32; label (B, T) int64; index (B,) int64;
    valid (B,) bool (False for the wrap-around padding of the last eval batches across ranks)."""

    audio: torch.Tensor
    image: torch.Tensor
    label: torch.Tensor
    index: torch.Tensor
    valid: torch.Tensor

    def to(self, device, non_blocking: bool = True) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def pin_memory(self) -> "Batch":
        """Page-locked copies (DataLoader calls this with pin_memory=True), for asynchronous .to(cuda)."""
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def __len__(self) -> int:
        return len(self.label)


def collate(items: list) -> tuple[Batch | DataError | None, int]:
    """(batch of the good items, or None if all were bad, or the first item's DataError; number of bad (None)
    items). A worker hands a DataError back as a value, so the main process raises it unchanged."""
    error = next((it for it in items if isinstance(it, DataError)), None)
    if error is not None:
        return error, 0
    good = [it for it in items if it is not None]
    if not good:
        return None, len(items)
    return Batch(audio=torch.stack([it["audio"] for it in good]), image=torch.stack([it["image"] for it in good]),
                 label=torch.stack([it["label"] for it in good]),
                 index=torch.tensor([it["index"] for it in good], dtype=torch.int64),
                 valid=torch.tensor([it["valid"] for it in good], dtype=torch.bool)), len(items) - len(good)


class EpochKeyedDataset(torch.utils.data.Dataset):
    """Dataset view whose keys are (epoch, index, valid) triples, so workers need no epoch state."""

    def __init__(self, dataset: ClipDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        """The item (None: skipped as bad) or, without skip_bad, the DataError that it raised."""
        epoch, index, valid = key
        try:
            item = self.dataset[(epoch, index)]
        except DataError as e:
            return e
        return None if item is None else dict(item, valid=valid)


def _worker_init(_):
    """One thread per decode worker; SIGINT/SIGTERM sent to the whole process group (Ctrl-C, a scheduler)
    are left to the main process, which stops after the current step and then ends its workers."""
    torch.set_num_threads(1)
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)


class Loader:
    """Re-iterable batches of one rank. len() = batches per full epoch for this rank; iteration
    starts at `start_batch`. `skipped` counts
    bad samples skipped so far (manifest rows left out at indexing included)."""

    def __init__(self, dataset: ClipDataset, batch_size: int, seed: int, rank: int, world_size: int, epoch: int,
                 start_batch: int, drop_last: bool, num_workers: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size, self.drop_last, self.num_workers = rank, world_size, drop_last, num_workers
        self.epoch, self.start_batch = epoch, start_batch
        self.position = start_batch  # planned batches of this epoch consumed, wholly skipped ones included
        self.skipped = dataset.bad_rows

    def batch_keys(self) -> list[list[tuple[int, int, bool]]]:
        """This rank's batches of this epoch, from start_batch on, as (epoch, index, valid) keys."""
        order = epoch_order(len(self.dataset), self.seed, self.epoch, shuffle=self.dataset.train)
        idx, valid = shard(order, self.rank, self.world_size, self.drop_last)
        n = len(self)
        keys = [(self.epoch, int(i), bool(v)) for i, v in zip(idx, valid)]
        return [keys[b * self.batch_size:(b + 1) * self.batch_size] for b in range(self.start_batch, n)]

    def __len__(self) -> int:
        per_rank = len(shard(np.arange(len(self.dataset)), self.rank, self.world_size, self.drop_last)[0])
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __iter__(self):
        keys = self.batch_keys()
        if not keys:
            return
        loader = DataLoader(EpochKeyedDataset(self.dataset), batch_sampler=keys, num_workers=self.num_workers,
                            collate_fn=collate, worker_init_fn=_worker_init if self.num_workers else None,
                            pin_memory=torch.cuda.is_available())
        for position, (batch, bad) in enumerate(loader, start=self.start_batch + 1):
            if isinstance(batch, DataError):
                raise batch
            self.skipped += bad
            self.position = position
            if batch is not None:
                yield batch
