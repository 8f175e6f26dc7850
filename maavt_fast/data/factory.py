"""`build_loader`: picks the decode path (cfg.decode: "cpu" torch DataLoader workers, "dali" NVIDIA DALI)."""
from __future__ import annotations

import logging

from maavt_fast.config import DataConfig
from maavt_fast.data.dataset import ClipDataset
from maavt_fast.data.loader import Loader

log = logging.getLogger(__name__)
_LOGGED_PATHS: set[str] = set()


def build_loader(cfg: DataConfig, split: str, img_size: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, epoch: int = 0, start_batch: int = 0, drop_last: bool | None = None,
                 num_workers: int | None = None, device_id: int | None = None):
    """Batches of `split` for this rank. device_id: the GPU for DALI's mixed/gpu operators (None: DALI on CPU)."""
    drop_last = split == "train" if drop_last is None else drop_last
    workers = cfg.num_workers if num_workers is None else num_workers
    dataset = ClipDataset(cfg, split, img_size, seed)
    if cfg.decode not in _LOGGED_PATHS:
        _LOGGED_PATHS.add(cfg.decode)
        log.info("data: decoding on the %s path (%s)", cfg.decode,
                 "torch DataLoader, PIL + soundfile + torch.stft" if cfg.decode == "cpu" else
                 f"NVIDIA DALI, device_id={device_id}")
    if cfg.decode == "dali":
        from maavt_fast.data.dali import DaliLoader

        return DaliLoader(dataset, batch_size, seed, rank, world_size, epoch, start_batch, drop_last, workers,
                          device_id)
    return Loader(dataset, batch_size, seed, rank, world_size, epoch, start_batch, drop_last, workers)
