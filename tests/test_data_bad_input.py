"""Bad input: an error that names the file and the problem, or (skip_bad) a counted skip."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
from test_data_media import one_thread, tiny_csv, write_wav  # noqa: F401 (fixture)

from maavt_fast.config import preset
from maavt_fast.data import DataError, build_dataset, build_loader

pytestmark = pytest.mark.usefixtures("one_thread")


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def bomb(path, side=14000):
    """A PNG whose header declares side x side pixels (decoding it would need gigabytes)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def nan_wav(path):
    wave = np.zeros(32000, np.float32)
    wave[100] = np.nan
    sf.write(path, wave, 16000, subtype="FLOAT")


def garbage(path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())


# (name, break the first test clip (root, frames folder or video, wav), file the error names, message)
FRAME_CASES = [
    ("frames folder missing", lambda r, v, w: shutil.rmtree(v), "frames/c2", "frame folder is missing"),
    ("frames folder empty", lambda r, v, w: [f.unlink() for f in v.iterdir()], "frames/c2", "holds no images"),
    ("jpeg empty", lambda r, v, w: (v / "000001.jpg").write_bytes(b""), "000001.jpg", "image file is empty"),
    ("jpeg truncated", lambda r, v, w: truncate(v / "000001.jpg"), "000001.jpg", "corrupt or truncated image"),
    ("jpeg corrupt", lambda r, v, w: garbage(v / "000001.jpg"), "000001.jpg", "corrupt or truncated image"),
    ("jpeg bomb", lambda r, v, w: bomb(v / "000001.jpg"), "000001.jpg", "image too large to decode safely"),
    ("wav missing", lambda r, v, w: w.unlink(), "c2.wav", "audio file is missing"),
    ("wav nan", lambda r, v, w: nan_wav(w), "c2.wav", "audio holds NaN or infinite samples"),
    ("wav empty", lambda r, v, w: w.write_bytes(b""), "c2.wav", "audio file is empty"),
    ("wav truncated", lambda r, v, w: truncate(w), "c2.wav", "truncated audio: the header says 32000 frames"),
    ("wav corrupt", lambda r, v, w: garbage(w), "c2.wav", "unreadable audio"),
    ("wav sample rate", lambda r, v, w: write_wav(w, rate=22050), "c2.wav", "sample rate is 22050 Hz, expected 16000"),
]
VIDEO_CASES = [
    ("video missing", lambda r, v, w: v.unlink(), "c2.webm", "video file is missing"),
    ("video empty", lambda r, v, w: v.write_bytes(b""), "c2.webm", "video file is empty"),
    ("video truncated", lambda r, v, w: truncate(v, 0.4), "c2.webm", "truncated video"),
    ("video corrupt", lambda r, v, w: garbage(v), "c2.webm", "unreadable video"),
]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    tiny_csv(root / "frames_ds", n=2)
    tiny_csv(root / "video_ds", n=2, videos=True)
    return root


def broken(clean, tmp_path, kind, breaker):
    root = tmp_path / kind
    shutil.copytree(clean / kind, root)
    visual = root / ("videos/c2.webm" if kind == "video_ds" else "frames/c2")
    breaker(root, visual, root / "audio/c2.wav")
    cfg = preset("tiny").data
    cfg.dataset, cfg.root, cfg.num_workers = "csv", str(root), 0
    return cfg


@pytest.mark.parametrize("name,breaker,where,message", FRAME_CASES + VIDEO_CASES, ids=[c[0] for c in
                                                                                         FRAME_CASES + VIDEO_CASES])
def test_bad_file_is_named_or_skipped_and_counted(clean, tmp_path, name, breaker, where, message):
    cfg = broken(clean, tmp_path, "video_ds" if name.startswith("video") else "frames_ds", breaker)
    ds = build_dataset(cfg, "test", 32, 0)
    with pytest.raises(DataError, match=message) as err:
        ds[(0, 0)]
    assert where in err.value.path
    assert ds[(0, 1)]["image"].shape == (1, 3, 32, 32)  # the intact clip still loads
    cfg.skip_bad = True
    loader = build_loader(cfg, "test", 32, batch_size=2, seed=0)
    got = list(loader)
    assert [b.index.tolist() for b in got] == [[1]] and loader.skipped == 1


def test_a_batch_of_only_bad_samples_yields_nothing_but_counts(clean, tmp_path):
    cfg = broken(clean, tmp_path, "frames_ds", lambda r, v, w: (w.unlink(), (r / "audio/c3.wav").unlink()))
    cfg.skip_bad = True
    loader = build_loader(cfg, "test", 32, batch_size=2, seed=0)
    assert list(loader) == [] and loader.skipped == 2
    assert loader.position == len(loader) == 1  # the skipped batch still counts as consumed (exact resume)


def test_stereo_wav_is_averaged_to_mono(tmp_path):
    from maavt_fast.data.audio import read_wav

    left, right = np.full(100, 0.5, np.float32), np.full(100, -0.25, np.float32)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(read_wav(tmp_path / "s.wav", 16000), 0.125)
