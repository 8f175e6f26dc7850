"""The DALI path on CPU (device_id=None): same samples as the CPU loader, same eval tensors up to stated
tolerances, seeded train transforms. GPU ("mixed") decoding is exercised by benchmarks/data.py."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_data_media import (csv_manifest, one_thread, tiny_ave, tiny_cremad, tiny_csv,  # noqa: F401 (fixture)
                             tiny_vggsound, write_video, write_wav)

from maavt_fast.data import build_loader
from maavt_fast.data.audio import clipped_window, hann

pytest.importorskip("nvidia.dali")
pytestmark = pytest.mark.usefixtures("one_thread")

# Tolerances, in 0..255 pixel levels after undoing the normalisation. JPEG: libjpeg-turbo in both, but
# PIL's and DALI's antialiased resizes round differently. Video: the CPU path converts YUV 4:2:0 to RGB
# as DALI does (video.yuv_to_rgb), so only rounding differs.
JPEG_MAX, JPEG_MEAN = 3.0, 0.5
VIDEO_MAX, VIDEO_MEAN = 2.0, 0.5
SPEC_TOL = 1e-4  # where |STFT| >= 0.1; below it float32 FFT rounding (~6e-6) is amplified by the log


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    return tiny_vggsound(tmp_path_factory.mktemp("v"), classes=3, clips=6)


def load(cfg, decode, split="test", img_size=32, **kw):
    cfg = dataclasses.replace(cfg, decode=decode)
    return list(build_loader(cfg, split, img_size, **{"batch_size": 3, "seed": 1, **kw}))


def pixel_diff(a, b, cfg):
    return (a.image - b.image).abs() * torch.tensor(cfg.image_std).view(1, 1, 3, 1, 1) * 255


def assert_spectrograms_match(cpu, dali, cfg, clips, offset):
    a = cfg.audio
    for batch_c, batch_d in zip(cpu, dali):
        for k, i in enumerate(batch_c.index.tolist()):
            x = torch.from_numpy(clipped_window(clips[i].audio, a, offset))
            mag = torch.stft(x.double(), a.n_fft, a.hop, a.n_fft, hann(a.n_fft).double(), center=True,
                             pad_mode=a.pad_mode, return_complex=True).abs()
            diff = (batch_c.audio[k, 0] - batch_d.audio[k, 0]).abs()
            assert diff[mag >= 0.1].max() < SPEC_TOL and diff.mean() < SPEC_TOL


def assert_same_samples(cpu, dali):
    assert len(cpu) == len(dali)
    for a, b in zip(cpu, dali):
        assert torch.equal(a.index, b.index) and torch.equal(a.label, b.label) and torch.equal(a.valid, b.valid)
        assert a.audio.shape == b.audio.shape and a.image.shape == b.image.shape


@pytest.mark.parametrize("n_fft,pad_mode", [(62, "reflect"), (63, "constant")])
def test_eval_frames_match_cpu_loader(vgg, n_fft, pad_mode):
    cfg = dataclasses.replace(vgg, audio=dataclasses.replace(vgg.audio, n_fft=n_fft, pad_mode=pad_mode))
    cpu, dali = load(cfg, "cpu"), load(cfg, "dali")
    assert_same_samples(cpu, dali)
    from maavt_fast.data.dataset import ClipDataset

    clips = ClipDataset(cfg, "test", 32, 1).clips
    assert_spectrograms_match(cpu, dali, cfg, clips, round(cfg.audio.test_offset_seconds * 16000))
    diffs = torch.cat([pixel_diff(a, b, cfg).flatten() for a, b in zip(cpu, dali)])
    assert diffs.max() <= JPEG_MAX and diffs.mean() <= JPEG_MEAN


def test_eval_raw_video_matches_cpu_loader(tmp_path):
    cfg = tiny_csv(tmp_path / "m", n=1, videos=True)
    cpu, dali = load(cfg, "cpu", batch_size=2), load(cfg, "dali", batch_size=2)
    assert_same_samples(cpu, dali)
    from maavt_fast.data.dataset import ClipDataset

    clips = ClipDataset(cfg, "test", 32, 1).clips
    assert_spectrograms_match(cpu, dali, cfg, clips, round(cfg.audio.test_offset_seconds * 16000))
    diffs = pixel_diff(cpu[0], dali[0], cfg)
    assert diffs.max() <= VIDEO_MAX and diffs.mean() <= VIDEO_MEAN


def test_eval_cremad_and_ave_match_cpu_loader(tmp_path):
    """CREMA-D: 22.05 kHz, odd n_fft 447 -> 224 x 224; AVE: 10 segments of Kaldi fbank, bicubic frames."""
    cremad = tiny_cremad(tmp_path / "c")
    cpu, dali = load(cremad, "cpu", img_size=224), load(cremad, "dali", img_size=224)
    assert_same_samples(cpu, dali)
    from maavt_fast.data.dataset import ClipDataset

    assert_spectrograms_match(cpu, dali, cremad, ClipDataset(cremad, "test", 224, 1).clips, 0)
    ave = tiny_ave(tmp_path / "a")
    cpu, dali = load(ave, "cpu", "val"), load(ave, "dali", "val")
    assert_same_samples(cpu, dali)
    assert cpu[0].audio.shape == (1, 10, 32, 32)
    torch.testing.assert_close(cpu[0].audio, dali[0].audio, rtol=0, atol=0)  # fbank is computed on the host
    diffs = pixel_diff(cpu[0], dali[0], ave)
    assert diffs.max() <= JPEG_MAX and diffs.mean() <= JPEG_MEAN


def test_train_transforms_same_plans_ranges_and_seeded(vgg):
    cpu, dali = load(vgg, "cpu", "train", epoch=2), load(vgg, "dali", "train", epoch=2)
    assert_same_samples(cpu, dali)  # same order, labels (background pairs included) and crops
    assert_same_samples(dali, load(vgg, "dali", "train", epoch=2, num_workers=2))
    again = load(vgg, "dali", "train", epoch=2)
    lo = (0 - np.array(vgg.image_mean)) / np.array(vgg.image_std)
    hi = (1 - np.array(vgg.image_mean)) / np.array(vgg.image_std)
    for a, b, c in zip(cpu, dali, again):
        assert torch.equal(b.image, c.image) and torch.equal(b.audio, c.audio)
        img = b.image.permute(0, 1, 3, 4, 2)
        assert (img >= torch.tensor(lo, dtype=torch.float32) - 1e-5).all()
        assert (img <= torch.tensor(hi, dtype=torch.float32) + 1e-5).all()
        assert torch.isfinite(b.audio).all() and abs(float(b.audio.mean())) < 1e-3
        # same crop box and flip, resampled by two libraries
        assert pixel_diff(a, b, vgg).mean() <= 4 * JPEG_MEAN


def test_bad_files_on_dali_are_named_or_skipped(vgg, tmp_path):
    import shutil
    from pathlib import Path

    from maavt_fast.data import DataError
    from maavt_fast.data.dataset import ClipDataset

    root = tmp_path / "v"
    shutil.copytree(vgg.root, root)
    cfg = dataclasses.replace(vgg, root=str(root), decode="dali")
    clips = ClipDataset(cfg, "test", 32, 1).clips
    clips[0].audio.write_bytes(b"")
    with pytest.raises(DataError, match="audio file is empty") as err:  # raised in a parallel worker
        list(build_loader(cfg, "test", 32, 3, seed=1, num_workers=2))
    assert err.value.path == str(clips[0].audio)
    loader = build_loader(dataclasses.replace(cfg, skip_bad=True), "test", 32, 3, seed=1)
    assert sum(len(b) for b in loader) == 5 and loader.skipped == 1
    # a JPEG cut after its header: DALI's decoder would return grey; the host source refuses it
    shutil.copy(Path(vgg.root) / clips[0].audio.relative_to(root), clips[0].audio)
    frame = sorted(clips[4].visual.iterdir())[0]
    data = frame.read_bytes()
    frame.write_bytes(data[:len(data) * 7 // 10])
    with pytest.raises(DataError, match="corrupt or truncated image") as err:
        list(build_loader(cfg, "test", 32, 3, seed=1))
    assert err.value.path == str(frame)
    loader = build_loader(dataclasses.replace(cfg, skip_bad=True), "test", 32, 3, seed=1)
    assert sum(len(b) for b in loader) == 5 and loader.skipped == 1


def test_h264_on_the_cpu_decoder_is_refused_when_the_loader_is_built(tmp_path):
    """DALI's CPU video decoder cannot decode H.264: said in one line before the first batch, with the way out."""
    from maavt_fast.data import DataError

    cfg = tiny_csv(tmp_path / "webm", n=1, videos=True)
    rows = []
    for i, split in enumerate(("train", "test", "test")):
        write_video(tmp_path / "mp4" / f"c{i}.mp4", seconds=2, fps=4, seed=i)
        write_wav(tmp_path / "mp4" / f"c{i}.wav", seed=i)
        rows.append((split, f"c{i}.mp4", f"c{i}.wav", f"class{i % 2}"))
    csv_manifest(tmp_path / "mp4", rows)
    mp4 = dataclasses.replace(cfg, root=str(tmp_path / "mp4"), decode="dali")
    with pytest.raises(DataError) as err:
        build_loader(mp4, "test", 32, batch_size=2, seed=1)  # built, not iterated
    assert str(err.value) == (f"{tmp_path / 'mp4' / 'c1.mp4'}: DALI's CPU video decoder cannot decode H.264 (h264) "
                              "video: use --data.decode cpu, or decode on a GPU")
    assert len(list(build_loader(dataclasses.replace(mp4, decode="cpu"), "test", 32, batch_size=2, seed=1))) == 1
    assert len(load(cfg, "dali", batch_size=2)) == 1  # VP9 (.webm) decodes on the CPU
