"""Pictures of a run: loss/accuracy curves, the confusion matrix, and attention maps with an HTML index.

Attention maps (spec §7, with its black-map bug fixed): the last block's CLS-row attention over the
patches (`MAAVTOutput.attn`, (N, S/16, S/16), softmax values that sum to 1), min-max normalised per
sample, upsampled to the frame and blended with it, next to the frame and the model's spectrogram.
"""
from __future__ import annotations

import contextlib
import html
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported on first use (no side effect at import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict], path: str | Path) -> Path:
    """Loss and accuracy against the step, train (logged averages) and val; `history` from `LoopState`."""
    path, plt = Path(path), _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, style in (("train", "-"), ("val", "o-")):
        rows = [r for r in history if r["event"] == kind]
        steps = [r["step"] for r in rows]
        ax_loss.plot(steps, [r["loss"] for r in rows], style, label=kind)
        ax_acc.plot(steps, [r["total_acc"] for r in rows], style, label=f"{kind} total_acc")
        if kind == "val":
            ax_acc.plot(steps, [r["pred_acc"] for r in rows], "s--", label="val pred_acc (bg-aware)")
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(confusion: torch.Tensor, class_names: list[str], path: str | Path) -> Path:
    """(C, C) counts (rows = truth) as a row-normalised heat map, annotated with counts when C <= 20."""
    path, plt = Path(path), _pyplot()
    cm = confusion.double()
    norm = (cm / cm.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
    c = len(class_names)
    size = max(4.0, 0.45 * c + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if c <= 40:
        ax.set_xticks(range(c), class_names, rotation=90, fontsize=8)
        ax.set_yticks(range(c), class_names, fontsize=8)
    if c <= 20:
        for i in range(c):
            for j in range(c):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title="confusion (row-normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def normalize_map(attn: torch.Tensor) -> torch.Tensor:
    """Min-max normalise one (h, w) map to [0, 1]; a constant map becomes all zeros."""
    attn = attn.float()
    lo, hi = attn.min(), attn.max()
    return (attn - lo) / (hi - lo) if hi > lo else torch.zeros_like(attn)


def attention_images(frame: torch.Tensor, attn: torch.Tensor, spec: torch.Tensor, mean, std) -> dict[str, np.ndarray]:
    """frame (3, S, S) normalised, attn (S/16, S/16), spec (S, S) -> uint8 HxWx3 images:
    frame, attention (JET), overlay (0.5/0.5 blend), spectrogram (magma, low frequencies at the bottom)."""
    import matplotlib

    jet, magma = matplotlib.colormaps["jet"], matplotlib.colormaps["magma"]
    size = frame.shape[-1]
    rgb = (frame.float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1))
    rgb = rgb.permute(1, 2, 0).numpy()
    up = F.interpolate(normalize_map(attn)[None, None].cpu(), size=(size, size), mode="bilinear",
                       align_corners=False)[0, 0].clamp(0, 1).numpy()
    heat = jet(up)[..., :3]
    s = normalize_map(spec.cpu()).numpy()[::-1]
    return {"frame": _to_uint8(rgb), "attention": _to_uint8(heat), "overlay": _to_uint8(0.5 * rgb + 0.5 * heat),
            "spectrogram": _to_uint8(magma(s)[..., :3])}


@torch.no_grad()
def attention_gallery(model, batch, out_dir: str | Path, class_names: list[str], mean, std,
                      limit: int = 8, autocast=None) -> Path:
    """Run `model` (bare MAAVT) on `batch` with `return_attn=True`, save PNGs of the first `limit` rows
    (first frame of each clip) and an `index.html` table; returns the index path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    with autocast or contextlib.nullcontext():
        out = model(batch.audio, batch.image, None, return_attn=True)
    if out.attn is None:
        raise RuntimeError("the model returned no attention map although return_attn=True")
    t = batch.audio.shape[1]
    labels, preds = batch.label.reshape(-1), out.fg_logits.argmax(dim=1)
    rows = []
    for i in range(min(limit, batch.audio.shape[0])):
        r = i * t  # first frame of clip i in the flattened (B*T) rows
        images = attention_images(batch.image[i, 0], out.attn[r], batch.audio[i, 0], mean, std)
        cells = []
        for kind, arr in images.items():
            name = f"{i:03d}_{kind}.png"
            Image.fromarray(arr).save(out_dir / name)
            cells.append(f'<td><img src="{name}" width="160"></td>')
        truth, pred = _name(class_names, int(labels[r])), _name(class_names, int(preds[r]))
        mark = "&#10003;" if truth == pred else "&#10007;"
        rows.append(f"<tr><td>{i}</td><td>{html.escape(truth)}</td><td>{html.escape(pred)} {mark}</td>"
                    + "".join(cells) + "</tr>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>MA-AVT attention maps</title>"
            "<style>td{text-align:center;font-family:sans-serif}</style></head><body>"
            "<h2>Last-block CLS attention over the visual patches (min-max normalised per sample)</h2>"
            "<table border='1' cellspacing='0'><tr><th>#</th><th>true</th><th>predicted</th><th>frame</th>"
            "<th>attention</th><th>overlay</th><th>spectrogram</th></tr>" + "\n".join(rows) + "</table></body></html>")
    index = out_dir / "index.html"
    index.write_text(page)
    return index


def _name(class_names: list[str], k: int) -> str:
    if 0 <= k < len(class_names):
        return class_names[k]
    return "background" if k < 0 else str(k)

