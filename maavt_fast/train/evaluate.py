"""Evaluation over a loader (all ranks together) and the accuracy report files.

Under torchrun every rank evaluates its shard and the counts, loss sums and confusion matrix are
all-reduced, so every rank returns the same `EvalResult`.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from maavt_fast.model.loss import MAAVTLoss
from maavt_fast.progress import progress
from maavt_fast.train.distributed import all_reduce_sum
from maavt_fast.train.metrics import COUNT_NAMES, batch_counts, confusion_counts, per_class_accuracy, summarize
from maavt_fast.train.step import Precision
from maavt_fast.train.visualize import plot_confusion


@dataclass
class EvalResult:
    """metrics: loss, fg_acc, bg_acc, total_acc, pred_acc, samples; confusion (C, C) rows = truth."""

    metrics: dict[str, float]
    confusion: torch.Tensor

    @property
    def per_class(self) -> list[float]:
        return per_class_accuracy(self.confusion)


@torch.no_grad()
def evaluate(model, loader, device: torch.device, precision: Precision, num_classes: int,
             max_batches: int | None = None, progress_label: str | None = None) -> EvalResult:
    """Forward the bare `MAAVT` over `loader` (batches with .audio/.image/.label/.to) in eval mode; with a
    `progress_label`, show the progress (a bar on a terminal, else a line per 10%).

    The loss has no process group: each rank's val loss uses its local batch, and ranks with different
    numbers of val batches cannot deadlock in a collective inside the loop.
    """
    was_training, loss_fn = model.training, MAAVTLoss(model.cfg)
    model.eval()
    counts = torch.zeros(len(COUNT_NAMES), dtype=torch.float64, device=device)
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # [sum of batch loss * n, n]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    try:
        for i, batch in enumerate(progress(loader, total, progress_label or "", enabled=progress_label is not None)):
            if i >= total:
                break
            batch = batch.to(device)
            real = _real_clips(batch)
            if not real.any():
                continue
            label = batch.label[real]
            with precision.autocast(device):
                out = loss_fn(model(batch.audio[real], batch.image[real]), label)
            label = label.reshape(-1)
            counts += batch_counts(out.fg_logits, out.bg_logits, label)
            n = torch.tensor(label.numel(), dtype=torch.float64, device=device)
            loss_sum += torch.stack([out.loss.detach().double() * n, n])
            confusion += confusion_counts(out.fg_logits, label, num_classes)
    finally:
        model.train(was_training)
    all_reduce_sum(counts)
    all_reduce_sum(loss_sum)
    all_reduce_sum(confusion)
    metrics = summarize(counts)
    metrics["loss"] = (loss_sum[0] / loss_sum[1]).item() if loss_sum[1] > 0 else float("nan")
    return EvalResult(metrics=metrics, confusion=confusion.cpu())


def _real_clips(batch) -> torch.Tensor:
    """(B,) bool: clips that are not the wrap-around padding a loader adds to even out ranks (`batch.valid`);
    only real clips are forwarded, so padding counts in neither the metrics nor the loss."""
    valid = getattr(batch, "valid", None)
    if valid is None:
        return torch.ones(batch.label.shape[0], dtype=torch.bool, device=batch.label.device)
    return valid.reshape(-1).to(device=batch.label.device, dtype=torch.bool)


def finite_or_none(x):
    """JSON has no NaN: a metric with an empty denominator is written as null."""
    return x if not isinstance(x, float) or math.isfinite(x) else None


def write_report(result: EvalResult, out_dir: str | Path, split: str, class_names: list[str]) -> dict[str, Path]:
    """`metrics_<split>.json` (overall + per class), `confusion_<split>.csv` and `.png`; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(class_names) != result.confusion.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {result.confusion.shape[0]}-class confusion matrix")
    paths = {"metrics": out_dir / f"metrics_{split}.json", "confusion_csv": out_dir / f"confusion_{split}.csv",
             "confusion_png": out_dir / f"confusion_{split}.png"}
    report = {"split": split, **{k: finite_or_none(v) for k, v in result.metrics.items()},
              "per_class_acc": {n: finite_or_none(a) for n, a in zip(class_names, result.per_class)}}
    paths["metrics"].write_text(json.dumps(report, indent=2) + "\n")
    with paths["confusion_csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, result.confusion.tolist()):
            w.writerow([name, *row])
    plot_confusion(result.confusion, class_names, paths["confusion_png"])
    return paths
