"""Media fixtures for the data tests: real JPEG/WAV/video files and dataset layouts written into tmp_path.

(No tests here; the test_data_* modules import these helpers.)
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import soundfile as sf
from PIL import Image

from maavt_fast.config import DataConfig, preset
from maavt_fast.data import synthesize


def picture(h: int, w: int, seed: int) -> np.ndarray:
    """(h, w, 3) uint8: smooth colour gradients plus a square, different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([np.sin(6 * x + rng.uniform(0, 6)), np.cos(5 * y + rng.uniform(0, 6)), np.sin(4 * (x + y))], -1)
    img = 127 + 100 * img
    t, l = rng.integers(0, h // 2), rng.integers(0, w // 2)
    img[t:t + h // 3, l:l + w // 3] = rng.uniform(0, 255, 3)
    return img.clip(0, 255).astype(np.uint8)


def write_jpeg(path: Path, h: int = 48, w: int = 64, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture(h, w, seed)).save(path, quality=92)
    return path


def tone(seconds: float, rate: int, freq: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t) + rng.normal(0, 0.05, len(t))).astype(np.float32)


def write_wav(path: Path, seconds: float = 2.0, rate: int = 16000, freq: float = 440.0, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, rate, freq, seed), rate, subtype="PCM_16")
    return path


def write_video(path: Path, seconds: int = 3, fps: int = 5, size: tuple[int, int] = (48, 64), seed: int = 0,
                audio_rate: int | None = None) -> Path:
    """A real video: VP9 for .webm, H.264 for .mp4; with an audio track (Opus / AAC) when audio_rate is set."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    webm = path.suffix == ".webm"
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libvpx-vp9" if webm else "h264", rate=fps)
        vs.height, vs.width = size
        vs.pix_fmt = "yuv420p"
        if audio_rate:
            a_s = out.add_stream("libopus" if webm else "aac", rate=48000 if webm else audio_rate)
            a_s.layout = "stereo"
        for i in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(picture(*size, seed * 1000 + i), format="rgb24")
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        if audio_rate:
            rate = a_s.rate
            wave = np.repeat(tone(seconds, rate, 440.0, seed)[None], 2, 0)
            step = a_s.codec_context.frame_size or 1024
            for start in range(0, wave.shape[1] - step + 1, step):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, start:start + step]), format="fltp",
                                                layout="stereo")
                af.sample_rate, af.pts = rate, start
                out.mux(a_s.encode(af))
            out.mux(a_s.encode(None))
    return path


def tiny_vggsound(root: Path, classes: int = 3, clips: int = 4) -> DataConfig:
    """A synthetic VGGSound-layout dataset and the `tiny` preset's data config pointing at it."""
    synthesize(root, num_classes=classes, clips_per_class=clips, seed=0, test_fraction=0.25, image_size=40)
    cfg = preset("tiny").data
    cfg.root, cfg.num_workers = str(root), 0
    return cfg


def csv_manifest(root: Path, rows: list[tuple[str, str, str, str]], header=("split", "video_or_frames", "audio",
                                                                             "label")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return root / "manifest.csv"


def tiny_csv(root: Path, n: int = 6, videos: bool = False) -> DataConfig:
    """A CSV-manifest dataset of n train + 2 test clips (frame folders, or VP9 .webm videos), 3 classes."""
    rows = []
    for i in range(n + 2):
        split = "train" if i < n else "test"
        label = f"class{i % 3}"
        if videos:
            write_video(root / "videos" / f"c{i}.webm", seconds=3, fps=4, seed=i)
            visual = f"videos/c{i}.webm"
        else:
            for k in range(3):
                write_jpeg(root / "frames" / f"c{i}" / f"{k + 1:06d}.jpg", seed=10 * i + k)
            visual = f"frames/c{i}"
        write_wav(root / "audio" / f"c{i}.wav", freq=300.0 + 200 * (i % 3), seed=i)
        rows.append((split, visual, f"audio/c{i}.wav", label))
    csv_manifest(root, rows)
    cfg = preset("tiny").data
    cfg.dataset, cfg.root, cfg.num_workers, cfg.val_fraction = "csv", str(root), 0, 0.0
    return cfg


def tiny_cremad(root: Path) -> DataConfig:
    """CREMA-D layout: 3 clips (22.05 kHz), frames named out of sorted order, test.csv with a header."""
    (root / "Annotations").mkdir(parents=True)
    rows = [("1001_DFA_ANG_XX", "ANG"), ("1002_DFA_NEU_XX", "NEU"), ("1003_DFA_HAP_XX", "HAP")]
    for i, (clip, _) in enumerate(rows):
        write_wav(root / "AudioWAV" / f"{clip}.wav", seconds=2.5, rate=22050, seed=i)
        for k, name in enumerate(["frame_b.jpg", "frame_a.jpg", "frame_c.jpg"]):
            write_jpeg(root / "frames" / "Image-01-FPS" / clip / name, seed=10 * i + k)
    with open(root / "Annotations" / "train.csv", "w") as f:
        f.write("".join(f"{c},{e}\n" for c, e in rows))
    with open(root / "Annotations" / "test.csv", "w") as f:
        f.write("clip,emotion\n" + "".join(f"{c},{e}\n" for c, e in rows[:2]))
    cfg = preset("cremad").data
    cfg.root = str(root)
    return cfg


def tiny_ave(root: Path, n: int = 4) -> DataConfig:
    """AVE layout: n 10-s clips of 12 frames, 3 classes + background segments, train/val/test orders."""
    import h5py

    cats = ["Church bell", "Dog", "Church bell", "Violin"]
    class_of = {"Church bell": 0, "Dog": 2, "Violin": 1}
    labels = np.zeros((n, 10, 4), np.float32)
    root.mkdir(parents=True)
    with open(root / "Annotations.txt", "w") as f:
        f.write("Category&VideoID&Quality&StartTime&EndTime\n")
        for i in range(n):
            vid = f"vid{i:03d}"
            f.write(f"{cats[i]}&{vid}&good&2&6\n")
            labels[i, :, 3] = 1  # background
            labels[i, 2:6, 3], labels[i, 2:6, class_of[cats[i]]] = 0, 1
            write_wav(root / "AVE_Dataset/raw_audio" / f"{vid}.wav", seconds=10.0, seed=i)
            for k in range(1, 13):
                write_jpeg(root / "AVE_Dataset/video_frames" / vid / f"{k:06d}.jpg", h=24, w=32, seed=100 * i + k)
    with h5py.File(root / "labels.h5", "w") as h:
        h["avadataset"] = labels
    for split, order in (("train", [0, 1]), ("val", [2]), ("test", [3])):
        with h5py.File(root / f"{split}_order.h5", "w") as h:
            h["order"] = np.array(order)
    cfg = preset("ave").data
    cfg.root = str(root)
    return cfg


@pytest.fixture
def one_thread():
    """Run torch on one thread (the CI box has 2 busy cores; small STFT/fbank calls thrash with more)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
