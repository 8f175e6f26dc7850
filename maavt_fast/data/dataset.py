"""`build_dataset`: a torch Dataset of dict items, decoded on the CPU (PIL, soundfile, torch.stft).

Item: audio (T, S, S) float32, image (T, 3, S, S) float32, label (T,) int64 (background = BG_LABEL),
index int. Items are keyed `dataset[(epoch, i)]`: the epoch is part of the key, so workers need no
shared state.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import Dataset

from maavt_fast.config import DataConfig
from maavt_fast.data import video
from maavt_fast.data.audio import clip_spectrograms
from maavt_fast.data.errors import DataError
from maavt_fast.data.image import CropFlip, open_image, transform
from maavt_fast.data.manifests import build_index
from maavt_fast.data.plan import Plan, plan_sample

log = logging.getLogger(__name__)


class ClipDataset(Dataset):
    """The samples of one split. With cfg.skip_bad, a bad sample's item is None (the loader drops it)."""

    def __init__(self, cfg: DataConfig, split: str, img_size: int, seed: int):
        cfg.validate()
        cfg.check_img_size(img_size)
        index = build_index(cfg, split, seed)
        self.cfg, self.split, self.img_size, self.seed = cfg, split, img_size, seed
        self.clips, self.classes, self.bad_rows = index.clips, index.classes, len(index.bad_rows)
        self.train = split == "train"
        self.clip_labels = np.array([c.labels[0] for c in self.clips], dtype=np.int64)
        if self.train and cfg.bg_prob > 0 and len(set(self.clip_labels.tolist())) < 2:
            raise DataError(cfg.root, f"data.bg_prob={cfg.bg_prob} needs train clips of at least two classes")
        if not self.clips:
            log.warning("data: the %s split of %s (%s) is empty", split, cfg.root, cfg.dataset)

    def __len__(self) -> int:
        return len(self.clips)

    def plan(self, index: int, epoch: int) -> Plan:
        return plan_sample(self.clips, self.clip_labels, index, epoch, self.seed, self.cfg, self.train)

    def __getitem__(self, key):
        epoch, index = key
        try:
            return self.load(self.plan(int(index), int(epoch)))
        except DataError as e:
            if not self.cfg.skip_bad:
                raise
            log.warning("skipping sample %d: %s", index, e)
            return None

    def load(self, plan: Plan) -> dict:
        """Decode and transform one planned sample."""
        cfg, s = self.cfg, self.img_size
        t = cfg.frames_per_clip
        audio = clip_spectrograms(plan.audio, cfg.audio, s, t, plan.offset)
        frames = (video.read_frames(plan.visual, list(plan.frame_numbers)) if plan.is_video
                  else [open_image(f) for f in plan.frame_files])
        boxes = plan.boxes or [CropFlip.full(im.height, im.width) for im in frames]
        image = torch.stack([transform(im, b, s, cfg.image_mean, cfg.image_std, cfg.image_interp)
                             for im, b in zip(frames, boxes)])
        return {"audio": audio, "image": image, "label": torch.tensor(plan.labels, dtype=torch.int64),
                "index": plan.index}


def build_dataset(cfg: DataConfig, split: str, img_size: int, seed: int) -> ClipDataset:
    """The CPU-decoded dataset of `split` ("train" | "val" | "test")."""
    return ClipDataset(cfg, split, img_size, seed)
