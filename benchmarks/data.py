"""Data benchmark: samples/s of each decode path against a ViT-tiny MA-AVT training step, in one run.

The VGGSound recipe at 224x224 (train split: random 5-s crop of a tiled 10-s clip, STFT 446/358,
RandomResizedCrop + flip of a 640x360 JPEG frame) on a generated dataset of real files. Paths: "cpu"
(torch DataLoader, `--workers` processes), "dali-cpu" (DALI with device_id=None), and "dali-gpu"
(decoders on the GPU) when CUDA is available. The model row times `maavt_fast.train.step.TrainStep`
(forward, loss, backward, Adam; eager) of MAAVT with vit_tiny_patch16_224 and 309 classes on the same
batch size, so `loader_over_model` > 1 means the loader keeps up with training.

    python -m benchmarks.data [--quick] [--device cpu|cuda] [--batch 32] [--workers 2] [--out DIR]

Rows are appended to <out>/data.json and <out>/data.csv (benchmarks/harness.py).
"""
from __future__ import annotations

import argparse
import csv
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from benchmarks.harness import append_rows, environment, measure
from maavt_fast.config import ModelConfig, preset
from maavt_fast.data import build_loader

ROOT = Path(__file__).resolve().parents[1]

FRAME_HW = (360, 640)
FRAMES_PER_CLIP = 10
CLIP_SECONDS = 10.0
NUM_CLASSES = 309


def write_dataset(root: Path, clips: int, classes: int = 8) -> Path:
    """A VGGSound-layout dataset of `clips` train clips: 10 JPEG frames (640x360) and 10 s of 16 kHz audio each."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:FRAME_HW[0], 0:FRAME_HW[1]] / FRAME_HW[1]
    rows = []
    for i in range(clips):
        phase = rng.uniform(0, 6, 3)
        img = 127 + 90 * np.stack([np.sin(7 * x + phase[0]), np.cos(5 * y + phase[1]), np.sin(3 * (x + y) + phase[2])], -1)
        img += rng.normal(0, 12, img.shape)
        folder = root / "frames/train/Image-01-FPS" / f"clip{i:05d}_000000.mp4"
        folder.mkdir(parents=True)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / "000001.jpg", quality=90)
        for k in range(2, FRAMES_PER_CLIP + 1):
            shutil.copyfile(folder / "000001.jpg", folder / f"{k:06d}.jpg")
        t = np.arange(int(CLIP_SECONDS * 16000)) / 16000
        wave = 0.4 * np.sin(2 * np.pi * rng.uniform(200, 4000) * t) + rng.normal(0, 0.05, len(t))
        (root / "audio/train").mkdir(parents=True, exist_ok=True)
        sf.write(root / "audio/train" / f"clip{i:05d}_000000.wav", wave.astype(np.float32), 16000, subtype="PCM_16")
        rows.append((f"clip{i:05d}", 0, f"class{i % classes}", "train"))
    with open(root / "vggsound.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def loader_rate(root: Path, decode: str, batch: int, workers: int, epochs: int, device_id: int | None) -> dict:
    """Samples/s over `epochs` train epochs, timed from the first batch (worker start-up excluded)."""
    cfg = preset("vggsound").data
    cfg.root, cfg.decode, cfg.val_fraction = str(root), decode, 0.0
    seen, t0 = 0, None
    for epoch in range(epochs):
        loader = build_loader(cfg, "train", 224, batch, seed=0, epoch=epoch, num_workers=workers, device_id=device_id)
        for b in loader:
            if t0 is None:
                t0 = time.perf_counter()
            else:
                seen += len(b)
            if b.audio.is_cuda:
                torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"samples": seen, "seconds": round(seconds, 3), "samples_per_s": round(seen / seconds, 2)}


def model_step_rate(batch: int, device: torch.device, repeats: int, depth: int | None) -> tuple[str, float]:
    """(what was timed, samples/s) of one training step at `batch` clips of 224x224 (depth: ViT blocks kept)."""
    audio = torch.randn(batch, 1, 224, 224, device=device)
    image = torch.randn(batch, 1, 3, 224, 224, device=device)
    label = torch.randint(0, NUM_CLASSES, (batch, 1), device=device)
    try:
        from maavt_fast.model import MAAVT
        from maavt_fast.train.step import TrainStep, build_optimizer, choose_precision

        model = MAAVT(ModelConfig(vit="vit_tiny_patch16_224", num_classes=NUM_CLASSES, depth=depth)).to(device)
        step = TrainStep(model, model, build_optimizer(model, 1e-4, 0.0, device), choose_precision("auto", device),
                         device, compile=False)
        what = f"MAAVT vit_tiny{f' depth {depth}' if depth else ''} train step (eager)"
        steps = itertools.count()

        def run():
            step(audio, image, label, next(steps))
    except ImportError:
        import timm

        vit = timm.create_model("vit_tiny_patch16_224", num_classes=NUM_CLASSES, depth=depth or 12).to(device)
        opt = torch.optim.Adam(vit.parameters(), 1e-4)
        what = f"plain timm vit_tiny (depth {depth or 12}) fwd+bwd+Adam on the image (MAAVT not importable)"

        def run():
            torch.nn.functional.cross_entropy(vit(image[:, 0]), label[:, 0]).backward()
            opt.step()
            opt.zero_grad()
    m = measure(run, device, warmup=1, repeats=repeats)
    return what, batch / (m.median_ms / 1e3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.data", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="tiny run (16 clips, batch 4, a 1-block model): checks the script works, not a measurement")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clips", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.clips, args.epochs = 4, 16, 1
    device = torch.device(args.device)
    paths = [("cpu", None)]
    try:
        import nvidia.dali  # noqa: F401

        paths.append(("dali", None))
        if device.type == "cuda":
            paths.append(("dali", device.index or 0))
    except ImportError:
        print("nvidia.dali is not installed: DALI rows skipped")
    with tempfile.TemporaryDirectory() as tmp:
        root = write_dataset(Path(tmp), args.clips)
        what, model_sps = model_step_rate(args.batch, device, repeats=1 if args.quick else 3,
                                          depth=1 if args.quick else None)
        env = environment(device)
        rows = []
        for decode, device_id in paths:
            name = decode if decode == "cpu" else ("dali-gpu" if device_id is not None else "dali-cpu")
            r = loader_rate(root, decode, args.batch, args.workers, args.epochs, device_id)
            rows.append({"benchmark": "data", "path": name, "recipe": "vggsound-train-224", "batch": args.batch,
                         "workers": args.workers, **r, "model": what, "model_samples_per_s": round(model_sps, 2),
                         "loader_over_model": round(r["samples_per_s"] / model_sps, 2), "quick": args.quick, **env})
            print(f"{name:9s} {r['samples_per_s']:8.1f} samples/s   model step {model_sps:7.1f} samples/s   "
                  f"ratio {rows[-1]['loader_over_model']:.2f}")
    json_path, csv_path = append_rows(rows, args.out, "data")
    print(f"rows appended to {json_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
