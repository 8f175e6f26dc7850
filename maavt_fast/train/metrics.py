"""The release's accuracy metrics and a background-aware one, as summable counts (docs/model.md#metrics).

Every batch becomes one small count vector on the device (no host sync); counts are summed over
batches and all-reduced over ranks, and only `summarize` turns them into ratios:

- fg_acc:    top-1 of argmax(fg_logits) over non-background rows;
- bg_acc:    (sigmoid(bg_logit) > 0.5) == (label == BG) over all rows;
- total_acc: the release's logged number, per batch (fg_acc·#fg + bg_acc·#bg) / B, averaged over
             batches weighted by B (equals fg_acc when there are no background rows, as at val/test);
- pred_acc:  the end-to-end prediction "background if sigmoid(bg) > 0.5 else argmax fg" against the
             label (background = BG_LABEL), over all rows. The release computes and discards it.
"""
from __future__ import annotations

import torch

from maavt_fast.config import BG_LABEL

COUNT_NAMES = ("n", "n_fg", "fg_correct", "bg_correct", "n_bg", "total_num", "pred_correct")


def batch_counts(fg_logits: torch.Tensor, bg_logits: torch.Tensor | None, label: torch.Tensor) -> torch.Tensor:
    """Counts of one batch. fg_logits (N, C), bg_logits (N,) or None, label (N,) int64 -> float64, one per COUNT_NAMES."""
    label = label.reshape(-1)
    is_bg = label == BG_LABEL
    fg_pred = fg_logits.detach().argmax(dim=1)
    fg_hit = (fg_pred == label) & ~is_bg
    n = torch.tensor(label.numel(), dtype=torch.float64, device=label.device)
    n_bg = is_bg.sum().to(torch.float64)
    if bg_logits is None:  # no BG head: every row is predicted foreground
        bg_pred = torch.zeros_like(is_bg)
    else:
        bg_pred = bg_logits.detach().reshape(-1) > 0  # sigmoid(x) > 0.5
    bg_correct = (bg_pred == is_bg).sum().to(torch.float64)
    fg_correct = fg_hit.sum().to(torch.float64)
    total_num = fg_correct + bg_correct / n.clamp(min=1) * n_bg
    pred = torch.where(bg_pred, torch.full_like(fg_pred, BG_LABEL), fg_pred)
    pred_correct = (pred == label).sum().to(torch.float64)
    return torch.stack([n, n - n_bg, fg_correct, bg_correct, n_bg, total_num, pred_correct])


def summarize(counts: torch.Tensor) -> dict[str, float]:
    """Ratios from summed counts `(len(COUNT_NAMES),)`; a metric with an empty denominator is NaN, never a crash."""
    c = dict(zip(COUNT_NAMES, counts.double().cpu().tolist()))

    def ratio(num: float, den: float) -> float:
        return num / den if den > 0 else float("nan")

    return {
        "fg_acc": ratio(c["fg_correct"], c["n_fg"]),
        "bg_acc": ratio(c["bg_correct"], c["n"]),
        "total_acc": ratio(c["total_num"], c["n"]),
        "pred_acc": ratio(c["pred_correct"], c["n"]),
        "samples": int(c["n"]),
        "bg_samples": int(c["n_bg"]),
    }


def confusion_counts(fg_logits: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Confusion matrix of the FG head over non-background rows: (C, C) int64, rows = truth, cols = prediction."""
    label = label.reshape(-1)
    keep = label != BG_LABEL
    truth, pred = label[keep], fg_logits.detach().argmax(dim=1)[keep]
    flat = torch.bincount(truth * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> list[float]:
    """Recall per class from a (C, C) confusion matrix; NaN for a class with no samples."""
    totals = confusion.sum(dim=1).double()
    hits = confusion.diagonal().double()
    return torch.where(totals > 0, hits / totals.clamp(min=1), torch.full_like(totals, float("nan"))).tolist()


def top_confusions(confusion: torch.Tensor, k: int) -> list[tuple[int, int, int, float]]:
    """The `k` largest off-diagonal cells of a (C, C) count matrix (rows = truth), largest first, empty cells
    left out: (true class, predicted class, count, count as a fraction of the true class's samples)."""
    c = confusion.shape[0]
    off = confusion.clone().long()
    off.fill_diagonal_(0)
    totals = confusion.sum(dim=1).tolist()
    counts, flat = off.flatten().topk(min(k, off.numel()))
    return [(i // c, i % c, n, n / totals[i // c]) for n, i in zip(counts.tolist(), flat.tolist()) if n > 0]
