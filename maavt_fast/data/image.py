"""Frames -> normalised (3, S, S) float32 tensors (docs/model.md#inputs), the CPU reference for DALI.

Train: RandomResizedCrop(S) (torchvision's algorithm, scale (0.08, 1), ratio (3/4, 4/3)) with its
parameters drawn from a given numpy generator, then a horizontal flip with probability 0.5.
Test: resize to (S, S). Both: ToTensor (/255) and Normalize(mean, std).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maavt_fast._extras import requires

with requires("data", __name__):
    from PIL import Image

from maavt_fast.data.errors import DataError, require_file

RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
INTERP = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


@dataclass(frozen=True)
class CropFlip:
    """A crop box (top, left, height, width) in pixels of the source frame and a horizontal flip."""

    top: int
    left: int
    height: int
    width: int
    flip: bool

    @staticmethod
    def full(height: int, width: int) -> "CropFlip":
        return CropFlip(0, 0, height, width, False)


def random_crop_flip(height: int, width: int, rng: np.random.Generator) -> CropFlip:
    """torchvision's RandomResizedCrop.get_params + RandomHorizontalFlip, drawn from `rng`."""
    area = height * width
    log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*RRC_SCALE)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return CropFlip(top, left, h, w, bool(rng.random() < 0.5))
    ratio = width / height
    if ratio < RRC_RATIO[0]:
        w, h = width, int(round(width / RRC_RATIO[0]))
    elif ratio > RRC_RATIO[1]:
        h, w = height, int(round(height * RRC_RATIO[1]))
    else:
        w, h = width, height
    return CropFlip((height - h) // 2, (width - w) // 2, h, w, bool(rng.random() < 0.5))


def open_image(path: str | Path) -> Image.Image:
    """A decoded RGB frame; DataError naming the file if it is missing, empty, truncated or corrupt."""
    path = require_file(path, "image")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except Image.DecompressionBombError as e:
        raise DataError(path, f"image too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(path, f"corrupt or truncated image ({e})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the file header only; DataError if the file is missing or not an image."""
    path = require_file(path, "image")
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except Image.DecompressionBombError as e:
        raise DataError(path, f"image too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(path, f"not a readable image ({e})") from None


def transform(img: Image.Image, box: CropFlip, size: int, mean, std, interp: str = "bilinear") -> torch.Tensor:
    """Crop `box`, resize to (size, size), flip, normalise -> (3, size, size) float32."""
    region = (box.left, box.top, box.left + box.width, box.top + box.height)
    out = img.resize((size, size), INTERP[interp], box=region)
    if box.flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return normalise(torch.from_numpy(np.asarray(out, dtype=np.uint8).copy()), mean, std)


def normalise(hwc: torch.Tensor, mean, std) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32, (x / 255 - mean) / std."""
    x = hwc.permute(2, 0, 1).float().div_(255.0)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
