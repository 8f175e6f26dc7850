"""What one sample is made of, decided before any decoding: `plan_sample`.

A `Plan` fixes every choice for sample `index` in `epoch` (audio crop offset, background partner,
frames, crop boxes and flips, labels) from (seed, epoch, index) alone. The CPU loader and the DALI
pipeline both execute the same plans, so they see the same samples.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maavt_fast.config import BG_LABEL, DataConfig
from maavt_fast.data import video
from maavt_fast.data.audio import crop_offset
from maavt_fast.data.errors import DataError
from maavt_fast.data.image import CropFlip, image_size, random_crop_flip
from maavt_fast.data.manifests import IMAGE_SUFFIXES, Clip
from maavt_fast.data.sampling import sample_rng


@dataclass(frozen=True)
class Plan:
    """Sample `index`: audio window at `offset` of `audio`; T frames of `visual` (files, or native frame
    numbers of a video); one CropFlip per frame (None: whole frame, test transform); labels (T,)."""

    index: int
    audio: Path
    offset: int
    visual: Path
    is_video: bool
    frame_files: tuple[Path, ...]
    frame_numbers: tuple[int, ...]
    boxes: tuple[CropFlip, ...] | None
    labels: tuple[int, ...]


def list_frames(folder: Path) -> list[Path]:
    """Image files of a frame folder in sorted order (a CREMA-D bug of the release, docs/model.md#bugs-we-fix)."""
    if not folder.is_dir():
        raise DataError(folder, "frame folder is missing")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise DataError(folder, "frame folder holds no images")
    return [folder / n for n in names]


def choose_frames(rule: str, n: int, count: int, offset: int, cfg: DataConfig, rng: np.random.Generator) -> list[int]:
    """Positions (0..n-1) of the `count` frames shown, among `n` 1-fps frames.

    center: frame int(start_sec + window / 2) with start_sec = offset // sample_rate (VGGSound: 2.5 s into a
    5-s window; a random frame when out of range, as the release); first: 0..count-1 (clamped);
    spread: linspace(0, n - 1, count) truncated (AVE).
    """
    if rule == "center":
        k = int(offset // cfg.audio.sample_rate + cfg.audio.window_seconds / 2)
        return [k if k < n else int(rng.integers(0, n))] * count
    if rule == "first":
        return [min(i, n - 1) for i in range(count)]
    return [int(p) for p in np.linspace(0, n - 1, count)]


def background_partner(labels: np.ndarray, index: int, rng: np.random.Generator) -> int:
    """A uniformly drawn clip whose class differs from clip `index`'s (docs/model.md#background-pairs).

    labels: (N,) class of each clip; the caller ensures there are at least two classes.
    """
    own = labels[index]
    while True:
        j = int(rng.integers(0, len(labels)))
        if labels[j] != own:
            return j


def plan_sample(clips: list[Clip], clip_labels: np.ndarray, index: int, epoch: int, seed: int, cfg: DataConfig,
                train: bool) -> Plan:
    """Every random choice of sample `index` in `epoch`, from sample_rng(seed, epoch, index).

    clip_labels: (N,) the first label of each clip (for drawing background partners).
    """
    rng = sample_rng(seed, epoch if train else 0, index)
    clip = clips[index]
    offset = crop_offset(cfg.audio, train, rng)
    labels, image_clip = clip.labels, clip
    if train and cfg.bg_prob > 0 and rng.random() < cfg.bg_prob:
        labels = (BG_LABEL,)
        if not cfg.bg_relabel_only:
            image_clip = clips[background_partner(clip_labels, index, rng)]
    t = cfg.frames_per_clip
    labels = labels * t if len(labels) == 1 else labels
    if len(labels) != t:
        raise DataError(clip.audio, f"has {len(labels)} segment labels but data.frames_per_clip is {t}")
    if image_clip.is_video:
        info = video.probe(image_clip.visual)
        numbers = tuple(info.native_frame(k) for k in
                        choose_frames(image_clip.frame_rule, info.seconds, t, offset, cfg, rng))
        files: tuple[Path, ...] = ()
        sizes = [(info.height, info.width)] * t
    else:
        listed = list_frames(image_clip.visual)
        numbers = tuple(choose_frames(image_clip.frame_rule, len(listed), t, offset, cfg, rng))
        files = tuple(listed[k] for k in numbers)
        sizes = [image_size(f) for f in files] if (train and cfg.train_augment) else []
    boxes = tuple(random_crop_flip(h, w, rng) for h, w in sizes) if (train and cfg.train_augment) else None
    return Plan(index, clip.audio, offset, image_clip.visual, image_clip.is_video, files, numbers, boxes, labels)
