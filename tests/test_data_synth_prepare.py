"""`synthesize` (learnable, seeded, VGGSound layout) and `prepare_videos` (raw videos -> official layout)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf
import torch
from test_data_media import one_thread, write_video  # noqa: F401 (fixture)

from maavt_fast.config import preset
from maavt_fast.data import build_dataset, prepare_videos, synthesize
from maavt_fast.data.video import probe

pytestmark = pytest.mark.usefixtures("one_thread")


def test_synthesize_layout_and_seed(tmp_path):
    a = synthesize(tmp_path / "a", num_classes=3, clips_per_class=5, seed=7, image_size=32)
    b = synthesize(tmp_path / "b", num_classes=3, clips_per_class=5, seed=7, image_size=32)
    rows = list(csv.reader(open(a / "vggsound.csv")))
    assert len(rows) == 15 and {r[3] for r in rows} == {"train", "test"} and len({r[2] for r in rows}) == 3
    yid, start, _, split = rows[0]
    stem = f"{yid}_{int(start):06d}"
    frames = sorted((a / "frames" / split / "Image-01-FPS" / f"{stem}.mp4").iterdir())
    assert [f.name for f in frames] == ["000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg"]
    wave, rate = sf.read(a / "audio" / split / f"{stem}.wav")
    assert rate == 16000 and wave.ndim == 1 and len(wave) == 32000
    assert (a / "vggsound.csv").read_bytes() == (b / "vggsound.csv").read_bytes()
    assert frames[0].read_bytes() == (b / frames[0].relative_to(a)).read_bytes()


def test_synthetic_classes_are_separable(tmp_path):
    """A nearest-class-mean classifier on the eval tensors of the `synthetic` preset gets the test split
    right, from the image alone and from the spectrogram alone: the classes are visible and audible."""
    cfg = preset("synthetic").data
    cfg.root = str(synthesize(tmp_path / "s", num_classes=8, clips_per_class=10, seed=1, image_size=64))
    cfg.val_fraction = 0.0

    def features(split):
        ds = build_dataset(cfg, split, 112, 0)
        items = [ds[(0, i)] for i in range(len(ds))]
        # image: mean colour of the 10% of pixels farthest from the frame's median colour (the shape)
        x = torch.stack([it["image"][0] for it in items]).flatten(2)  # (N, 3, pixels)
        far = (x - x.median(2, keepdim=True).values).norm(dim=1)
        top = far.topk(far.shape[1] // 10, dim=1).indices
        img_f = torch.gather(x, 2, top[:, None].expand(-1, 3, -1)).mean(2)
        # audio: the time-averaged spectrum
        aud_f = torch.stack([it["audio"][0].mean(1) for it in items])
        return img_f, aud_f, torch.tensor([int(it["label"][0]) for it in items])

    cfg.bg_prob = 0.0
    tr_img, tr_aud, tr_y = features("train")
    te_img, te_aud, te_y = features("test")
    for tr, te in ((tr_img, te_img), (tr_aud, te_aud)):
        means = torch.stack([tr[tr_y == c].mean(0) for c in range(8)])
        pred = torch.cdist(te, means).argmin(1)
        assert (pred == te_y).float().mean() >= 0.9


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "train" / "clipA_000000.mp4", seconds=3, fps=5, audio_rate=44100, seed=1)
    write_video(root / "train" / "clipB_000010.webm", seconds=2, fps=4, audio_rate=48000, seed=2)
    write_video(root / "test" / "silent.webm", seconds=2, fps=4, seed=3)
    (root / "test" / "broken.mp4").write_bytes(b"not a video at all")
    return root


def test_prepare_writes_official_layout_and_reports_failures(videos, tmp_path):
    out = tmp_path / "out"
    summary = prepare_videos(videos, out, workers=2)
    assert sorted(summary.done) == ["train/clipA_000000.mp4", "train/clipB_000010.webm"]
    assert summary.failed["test/silent.webm"] == "has no audio stream"
    assert "unreadable video" in summary.failed["test/broken.mp4"]
    assert "failed 2" in str(summary) and "silent.webm: has no audio stream" in str(summary)
    frames = sorted((out / "frames/train/Image-01-FPS/clipA_000000.mp4").iterdir())
    assert [f.name for f in frames] == ["000001.jpg", "000002.jpg", "000003.jpg"]
    wave, rate = sf.read(out / "audio/train/clipB_000010.wav")
    assert rate == 16000 and wave.ndim == 1 and abs(len(wave) / 16000 - 2.0) < 0.1
    # the 440 Hz tone survives resampling
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * 16000 / len(wave) - 440) < 5
    # frame k is the native frame at (k + 0.5) s: 1-fps frame 1 of a 5-fps video is native frame 7
    from maavt_fast.data.video import read_frames

    native = np.asarray(read_frames(videos / "train/clipA_000000.mp4", [probe(videos / "train/clipA_000000.mp4")
                                                                        .native_frame(1)])[0], dtype=float)
    from PIL import Image

    assert np.abs(np.asarray(Image.open(frames[1]), dtype=float) - native).mean() < 3
    again = prepare_videos(videos, out, workers=1)
    assert sorted(again.skipped) == sorted(summary.done) and not again.done


def test_prepare_audio_only_feeds_raw_video_mode(videos, tmp_path):
    out = tmp_path / "out"
    summary = prepare_videos(videos, out, workers=1, audio_only=True)
    assert len(summary.done) == 2 and not (out / "frames").exists()
    assert sf.info(out / "audio/train/clipA_000000.wav").samplerate == 16000
    with open(out / "manifest.csv", "w") as f:
        f.write("split,video_or_frames,audio,label\n")
        f.write(f"test,{videos}/train/clipA_000000.mp4,audio/train/clipA_000000.wav,a\n")
    cfg = preset("tiny").data
    cfg.dataset, cfg.root = "csv", str(out)
    item = build_dataset(cfg, "test", 32, 0)[(0, 0)]
    assert item["image"].shape == (1, 3, 32, 32) and item["audio"].shape == (1, 32, 32)
