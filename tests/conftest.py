"""Shared fixtures: tiny configs and inputs that keep the CPU suite fast."""
from __future__ import annotations

import pytest
import torch

from maavt_fast.config import Config, apply_overrides, preset
from maavt_fast.ops._dispatch import kernel_device


def tiny_config(**overrides: str) -> Config:
    """The `tiny` preset (ViT-tiny width, depth 2, 32x32 inputs) with dotted overrides as keyword args.

    Keys use `__` for dots: tiny_config(model__contrastive="final").
    """
    return apply_overrides(preset("tiny"), {k.replace("__", "."): v for k, v in overrides.items()})


def random_batch(batch: int, frames: int, size: int, num_classes: int, seed: int = 0, bg_every: int = 3):
    """audio (B,T,S,S), image (B,T,3,S,S), label (B,T) with every `bg_every`-th row background (-1)."""
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(batch, frames, size, size, generator=g)
    image = torch.randn(batch, frames, 3, size, size, generator=g)
    label = torch.randint(0, num_classes, (batch * frames,), generator=g)
    if bg_every:
        label[::bg_every] = -1
    return audio, image, label.view(batch, frames)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def device() -> torch.device:
    """Where the Triton kernels run: CUDA, else the CPU interpreter; fails (never skips) when neither can."""
    dev = kernel_device()
    if dev is None:
        pytest.fail("Triton kernels cannot run: no CUDA device and TRITON_INTERPRET=1 was not set before import")
    return dev
