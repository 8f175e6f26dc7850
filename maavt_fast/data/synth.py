"""`synthesize`: a learnable synthetic dataset of real files in the VGGSound layout (`maavt synth`).

Class c is visible (a shape in a colour on a noisy background tinted with that colour, position and
size jittered per frame) and audible (a tone with two overtones whose pitch and amplitude rhythm depend
on c, in noise). Files:
vggsound.csv, frames/{train,test}/Image-01-FPS/<id>_000000.mp4/00000k.jpg (4 frames, 1 per second),
audio/{train,test}/<id>_000000.wav (16 kHz mono PCM16).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from maavt_fast._extras import requires

with requires("data", __name__):
    import soundfile as sf
    from PIL import Image

from maavt_fast.config import ConfigError
from maavt_fast.progress import progress

SHAPES = ("disc", "square", "ring", "diamond", "hstripes", "vstripes", "cross", "triangle")
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 235), "yellow": (235, 220, 40),
           "magenta": (220, 50, 220), "cyan": (40, 220, 220), "white": (245, 245, 245), "orange": (245, 140, 20)}
SAMPLE_RATE = 16000
FRAMES_PER_CLIP = 4


def class_spec(c: int) -> tuple[str, str, float, float]:
    """(shape, colour, tone Hz, rhythm Hz) of class c; distinct for c < 64, tones 400-7000 Hz."""
    shape = SHAPES[c % len(SHAPES)]
    colour = list(COLOURS)[(c + c // len(SHAPES)) % len(COLOURS)]
    tone = 400.0 + (c % 16) * 420.0
    rhythm = 2.0 + (c // 16 + c) % 4 * 1.5
    return shape, colour, tone, rhythm


def _mask(shape: str, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = (y - cy) / r, (x - cx) / r
    inside = (np.abs(dy) <= 1) & (np.abs(dx) <= 1)
    return {
        "disc": dy ** 2 + dx ** 2 <= 1,
        "square": inside,
        "ring": (dy ** 2 + dx ** 2 <= 1) & (dy ** 2 + dx ** 2 >= 0.4),
        "diamond": np.abs(dy) + np.abs(dx) <= 1,
        "hstripes": inside & (np.floor((dy + 1) * 3) % 2 == 0),
        "vstripes": inside & (np.floor((dx + 1) * 3) % 2 == 0),
        "cross": inside & ((np.abs(dy) < 0.3) | (np.abs(dx) < 0.3)),
        "triangle": inside & (np.abs(dx) <= (dy + 1) / 2),
    }[shape]


def render_frame(c: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) uint8: class c's coloured shape with jittered position/size over noise."""
    shape, colour, _, _ = class_spec(c)
    rgb = np.asarray(COLOURS[colour], dtype=np.float64)
    img = 0.25 * rgb + 60 + rng.normal(0, 25, (size, size, 3)) + rng.uniform(-20, 20, 3)  # tinted background
    r = size * rng.uniform(0.28, 0.4)
    cy, cx = rng.uniform(r, size - r, 2)
    m = _mask(shape, size, cy, cx, r)
    img[m] = rgb * rng.uniform(0.8, 1.0) + rng.normal(0, 15, (int(m.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def render_audio(c: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """(n,) float32 at 16 kHz: class c's tone and overtones (+-3% pitch jitter) in its rhythm, plus noise."""
    _, _, tone, rhythm = class_spec(c)
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f = tone * rng.uniform(0.97, 1.03)
    envelope = 0.55 + 0.45 * np.sign(np.sin(2 * np.pi * rhythm * t + rng.uniform(0, 2 * np.pi)))
    partials = sum(np.sin(2 * np.pi * k * f * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3) if k * f < 7800)
    wave = 0.35 * envelope * partials + rng.normal(0, 0.05, len(t))
    return np.clip(wave, -1, 1).astype(np.float32)


def synthesize(out_dir: str | Path, num_classes: int = 8, clips_per_class: int = 50, seed: int = 0,
               test_fraction: float = 0.2, image_size: int = 128, seconds: float = 2.0,
               show_progress: bool = False) -> Path:
    """Write the dataset under `out_dir` and return it. Of each class's clips, `test_fraction` go to test.
    `show_progress`: a bar on a terminal, else a line per 10% on stdout."""
    if not 1 <= num_classes <= 64:
        raise ConfigError(f"num_classes (--classes) must be in [1, 64], got {num_classes}")
    if clips_per_class < 1:
        raise ConfigError(f"clips_per_class (--clips-per-class) must be >= 1, got {clips_per_class}")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test_fraction (--test-fraction) must be in [0, 1), got {test_fraction}")
    n_test = round(clips_per_class * test_fraction)
    if n_test >= clips_per_class:
        raise ConfigError(f"test_fraction={test_fraction} of {clips_per_class} clips per class leaves no train clips")
    if image_size < 16:
        raise ConfigError(f"image_size (--image-size) must be >= 16, got {image_size}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    rows = []
    clips = [(c, i) for c in range(num_classes) for i in range(clips_per_class)]
    for c, i in progress(clips, len(clips), "synth", show_progress):
        shape, colour, _, _ = class_spec(c)
        name = f"{shape}_{colour}"
        split = "test" if i < n_test else "train"
        clip = f"syn{c:02d}x{i:05d}"
        stem = f"{clip}_000000"
        folder = out / "frames" / split / "Image-01-FPS" / f"{stem}.mp4"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(FRAMES_PER_CLIP):
            Image.fromarray(render_frame(c, image_size, rng)).save(folder / f"{k + 1:06d}.jpg", quality=90)
        wav = out / "audio" / split / f"{stem}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        sf.write(wav, render_audio(c, seconds, rng), SAMPLE_RATE, subtype="PCM_16")
        rows.append((clip, 0, name, split))
    with open(out / "vggsound.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return out
