"""Learning rate as a pure function of the global step: linear warm-up, then constant, cosine or step decay.

Being a function of the step alone, the schedule needs no state of its own in a checkpoint: resuming
at step k gives the lr an uninterrupted run has at step k.
"""
from __future__ import annotations

import math

import torch

from maavt_fast.config import TrainConfig


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of the whole run: all epochs, capped by `max_steps`."""
    steps = cfg.epochs * steps_per_epoch
    return min(steps, cfg.max_steps) if cfg.max_steps is not None else steps


def lr_at(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """The lr of optimizer step `step` (0-based)."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.step_gamma ** (step // (cfg.step_epochs * steps_per_epoch))
    decay_steps = max(total_steps(cfg, steps_per_epoch) - warmup, 1)
    progress = min((step - warmup) / decay_steps, 1.0)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write `lr` into every param group; tensor lrs are filled in place so a compiled step never recompiles."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
