"""Data pipeline: dataset indexes, CPU and DALI decode paths, `synthesize` and `prepare_videos`.

Public interface used by the trainer and CLI:
  build_dataset(cfg, split, img_size, seed) -> Dataset of dict(audio (T,S,S), image (T,3,S,S), label (T,), index)
  build_loader(cfg, split, img_size, batch_size, seed, rank, world_size, epoch, start_batch, ...) -> batches
  class_names(cfg), synthesize(out_dir, ...), prepare_videos(videos_dir, out_dir, ...)
"""
from maavt_fast.data.dataset import build_dataset
from maavt_fast.data.errors import DataError
from maavt_fast.data.factory import build_loader
from maavt_fast.data.loader import Batch
from maavt_fast.data.manifests import class_names
from maavt_fast.data.prepare import prepare_videos
from maavt_fast.data.synth import synthesize

__all__ = ["Batch", "DataError", "build_dataset", "build_loader", "class_names", "prepare_videos", "synthesize"]
