"""Pictures of a run: loss/accuracy curves, the confusion matrix, and attention maps with an HTML index.

The confusion matrix shows row-normalised cells (the fraction of each true class predicted as each class)
with a colour bar, their values printed up to `CELL_VALUES_UP_TO` classes, and a table of the most
confused pairs (readable at VGGSound's 309 classes). Attention maps (docs/model.md#attention-maps;
black-map bug fixed): the last block's CLS-row attention over the patches (`MAAVTOutput.attn`, (N, S/16, S/16), softmax
values that sum to 1), min-max normalised per sample, upsampled to the frame and blended with it, next to
the frame and the model's spectrogram (labelled axes), one clip per class where the data allows.
matplotlib is imported inside the functions (its object API: no global backend is chosen).
"""
from __future__ import annotations

import contextlib
import dataclasses
import html
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from maavt_fast._extras import require_found
from maavt_fast.train.metrics import top_confusions

require_found("train", __name__, ("matplotlib",))  # found, not imported: matplotlib loads on the first plot

CELL_VALUES_UP_TO = 30  # classes up to which each cell's value is printed
CLASS_NAMES_UP_TO = 60  # classes up to which the axes carry class names (indices beyond)
TOP_PAIRS = 15  # rows of the most-confused-pairs table


def _figure(**kwargs):
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def curves_figure(history: list[dict]):
    """A Figure of the loss and accuracy against the step, train (logged averages) and val; `history` from
    `LoopState`."""
    fig = _figure(figsize=(10, 4), layout="tight")
    ax_loss, ax_acc = fig.subplots(1, 2)
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
    return fig


def plot_curves(history: list[dict], path: str | Path) -> Path:
    """`curves_figure` saved as a PNG."""
    path = Path(path)
    curves_figure(history).savefig(path, dpi=100)
    return path


def _short(name: str, n: int = 28) -> str:
    return name if len(name) <= n else name[:n - 1] + "…"


def confusion_figure(confusion: torch.Tensor, class_names: list[str]):
    """A matplotlib Figure of a (C, C) count matrix (rows = truth): row-normalised cells with a colour bar,
    cell values up to `CELL_VALUES_UP_TO` classes, and the `TOP_PAIRS` most confused pairs as a table."""
    cm = confusion.double()
    norm = (cm / cm.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
    c = len(class_names)
    side = min(max(4.0, 0.4 * c + 2), 14.0)
    fig = _figure(figsize=(side + 7, side + 1), layout="constrained")
    ax, ax_table = fig.subplots(1, 2, width_ratios=(side, 7))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class's samples")
    if c <= CLASS_NAMES_UP_TO:
        ax.set_xticks(range(c), [_short(n) for n in class_names], rotation=90, fontsize=8)
        ax.set_yticks(range(c), [_short(n) for n in class_names], fontsize=8)
    kind = "class" if c <= CLASS_NAMES_UP_TO else "class index"
    ax.set(xlabel=f"predicted {kind}", ylabel=f"true {kind}",
           title=f"confusion, row-normalised (each row sums to 1)\n{int(cm.sum())} samples, {c} classes")
    if c <= CELL_VALUES_UP_TO:
        for i in range(c):
            for j in range(c):
                if norm[i, j] > 0:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax_table.axis("off")
    pairs = top_confusions(confusion, TOP_PAIRS)
    ax_table.set_title(f"most confused pairs (top {len(pairs)})" if pairs else "no confusions")
    if pairs:
        rows = [[_short(class_names[t]), _short(class_names[p]), str(n), f"{f:.0%}"] for t, p, n, f in pairs]
        table = ax_table.table(cellText=rows, colLabels=["true", "predicted as", "count", "% of true"],
                               loc="upper center", colWidths=[0.38, 0.38, 0.12, 0.12], cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
    return fig


def plot_confusion(confusion: torch.Tensor, class_names: list[str], path: str | Path) -> Path:
    """`confusion_figure` saved as a PNG."""
    path = Path(path)
    confusion_figure(confusion, class_names).savefig(path, dpi=100)
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
    from matplotlib import colormaps

    jet, magma = colormaps["jet"], colormaps["magma"]
    size = frame.shape[-1]
    rgb = (frame.float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1))
    rgb = rgb.permute(1, 2, 0).numpy()
    up = F.interpolate(normalize_map(attn)[None, None].cpu(), size=(size, size), mode="bilinear",
                       align_corners=False)[0, 0].clamp(0, 1).numpy()
    heat = jet(up)[..., :3]
    s = normalize_map(spec.cpu()).numpy()[::-1]
    return {"frame": _to_uint8(rgb), "attention": _to_uint8(heat), "overlay": _to_uint8(0.5 * rgb + 0.5 * heat),
            "spectrogram": _to_uint8(magma(s)[..., :3])}


def _spectrogram_axes(spec: np.ndarray, audio_cfg) -> tuple[np.ndarray, list[float] | None, str, str]:
    """(image with frequency on rows, extent, x label, y label) of a model spectrogram (S, S): log-STFT rows are
    frequency, fbank rows are time; without `audio_cfg` (an AudioConfig) the axes count bins and frames."""
    if audio_cfg is None:
        return spec, None, "time frame", "frequency bin"
    if audio_cfg.features == "fbank":
        seconds = spec.shape[0] * audio_cfg.hop / audio_cfg.sample_rate
        return spec.T, [0, seconds, 0, spec.shape[1]], "time (s)", "mel bin"
    return spec, [0, audio_cfg.window_seconds, 0, audio_cfg.sample_rate / 2000], "time (s)", "frequency (kHz)"


def attention_figure(frame: torch.Tensor, attn: torch.Tensor, spec: torch.Tensor, mean, std, audio_cfg=None,
                     title: str = ""):
    """A Figure of one clip: the frame, the attention overlay with its colour bar, and the spectrogram with
    labelled axes and a colour bar. frame (3, S, S) normalised, attn (S/16, S/16), spec (S, S)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    images = attention_images(frame, attn, spec, mean, std)
    fig = _figure(figsize=(12, 3.6), layout="constrained")
    ax_frame, ax_overlay, ax_spec = fig.subplots(1, 3)
    ax_frame.imshow(images["frame"])
    ax_overlay.imshow(images["overlay"])
    fig.colorbar(ScalarMappable(Normalize(0, 1), "jet"), ax=ax_overlay, shrink=0.85,
                 label="attention (min-max per clip)")
    for ax, name in ((ax_frame, "frame"), (ax_overlay, "last-block CLS attention")):
        ax.set_title(name)
        ax.axis("off")
    img, extent, xlabel, ylabel = _spectrogram_axes(spec.float().cpu().numpy(), audio_cfg)
    im = ax_spec.imshow(img, origin="lower", aspect="auto", cmap="magma", extent=extent, interpolation="nearest")
    fig.colorbar(im, ax=ax_spec, shrink=0.85, label="log magnitude (standardised)")
    ax_spec.set(xlabel=xlabel, ylabel=ylabel, title="spectrogram (model input)")
    if title:
        fig.suptitle(title)
    return fig


def gallery_batch(batches, limit: int, max_batches: int = 8):
    """Up to `limit` clips for the gallery: one per true class, in order of appearance, from at most
    `max_batches` batches, then other clips to fill it; a batch of the loader's type (padding rows skipped)."""
    new_class, others, seen = [], [], set()
    for k, batch in enumerate(batches):
        for r in range(len(batch)):
            if not bool(batch.valid[r]):
                continue
            label = int(batch.label[r, 0])
            row = {f.name: getattr(batch, f.name)[r].clone() for f in dataclasses.fields(batch)}
            if label not in seen:
                seen.add(label)
                new_class.append(row)
            elif len(others) < limit:
                others.append(row)
        if len(new_class) >= limit or k + 1 >= max_batches:
            break
    rows = (new_class + others)[:limit]
    if not rows:
        raise ValueError("no clips for the attention gallery: the loader is empty")
    return type(batch)(**{name: torch.stack([row[name] for row in rows]) for name in rows[0]})


@torch.no_grad()
def attention_figures(model, batch, class_names: list[str], mean, std, limit: int = 8, autocast=None,
                      audio_cfg=None) -> list[tuple[str, str, object]]:
    """Run `model` (bare MAAVT, put in eval mode and back) on `batch` (see `gallery_batch`) with
    `return_attn=True`; (true name, predicted name, `attention_figure`) of the first frame of each clip."""
    was_training = model.training
    model.eval()
    try:
        with autocast or contextlib.nullcontext():
            out = model(batch.audio, batch.image, None, return_attn=True)
    finally:
        model.train(was_training)
    if out.attn is None:
        raise RuntimeError("the model returned no attention map although return_attn=True")
    t = batch.audio.shape[1]
    labels, preds = batch.label.reshape(-1), out.fg_logits.argmax(dim=1)
    figures = []
    for i in range(min(limit, batch.audio.shape[0])):
        r = i * t  # first frame of clip i in the flattened (B*T) rows
        truth, pred = _name(class_names, int(labels[r])), _name(class_names, int(preds[r]))
        figures.append((truth, pred, attention_figure(batch.image[i, 0], out.attn[r], batch.audio[i, 0], mean, std,
                                                      audio_cfg, title=f"true: {truth} | predicted: {pred}")))
    return figures


def attention_gallery(model, batch, out_dir: str | Path, class_names: list[str], mean, std,
                      limit: int = 8, autocast=None, audio_cfg=None) -> Path:
    """`attention_figures` saved as one PNG per clip with an `index.html`; returns the index path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (truth, pred, fig) in enumerate(attention_figures(model, batch, class_names, mean, std, limit, autocast,
                                                             audio_cfg)):
        name = f"{i:03d}.png"
        fig.savefig(out_dir / name, dpi=80)
        mark = "&#10003;" if truth == pred else "&#10007;"
        rows.append(f"<tr><td>{i}</td><td>{html.escape(truth)}</td><td>{html.escape(pred)} {mark}</td>"
                    f'<td><img src="{name}" width="720"></td></tr>')
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>MA-AVT attention maps</title>"
            "<style>td{text-align:center;font-family:sans-serif}</style></head><body>"
            "<h2>Last-block CLS attention over the visual patches (min-max normalised per clip)</h2>"
            "<table border='1' cellspacing='0'><tr><th>#</th><th>true</th><th>predicted</th>"
            "<th>frame | attention overlay | spectrogram</th></tr>" + "\n".join(rows) + "</table></body></html>")
    index = out_dir / "index.html"
    index.write_text(page)
    return index


def _name(class_names: list[str], k: int) -> str:
    if 0 <= k < len(class_names):
        return class_names[k]
    return "background" if k < 0 else str(k)
