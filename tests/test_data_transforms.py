"""Audio and image transforms of the CPU path against independent references (docs/model.md#inputs)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as kaldi
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from test_data_media import one_thread, picture, tone, write_wav  # noqa: F401 (fixture)

from maavt_fast.config import ConfigError, preset
from maavt_fast.data.audio import (clip_spectrograms, clipped_window, crop_offset, fbank_spectrogram, fbank_windows,
                                   stft_spectrogram, tiled_window)
from maavt_fast.data.image import CropFlip, random_crop_flip, transform

pytestmark = pytest.mark.usefixtures("one_thread")


def numpy_log_stft(x: np.ndarray, n_fft: int, hop: int, pad_mode: str) -> tuple[np.ndarray, np.ndarray]:
    """float64 reference: centred frames, periodic Hann, |rfft|; returns (|S|, standardised log |S|)."""
    x = np.pad(x.astype(np.float64), n_fft // 2, mode=pad_mode)
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([x[i:i + n_fft] * win for i in range(0, len(x) - n_fft + 1, hop)], 1)
    mag = np.abs(np.fft.rfft(frames, axis=0))
    log = np.log(mag + 1e-7)
    return mag, (log - log.mean()) / (log.std() + 1e-9)


@pytest.mark.parametrize("name", ["vggsound", "cremad", "synthetic", "tiny"])
@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_stft_matches_float64_reference(name, pad_mode):
    a = preset(name).data.audio
    a.pad_mode = pad_mode
    x = np.clip(tone(a.window_seconds, a.sample_rate, 523.0, seed=1) * 1.5, -1, 1)
    got = stft_spectrogram(x, a).numpy()
    mag, ref = numpy_log_stft(x, a.n_fft, a.hop, pad_mode)
    assert got.shape == ref.shape == preset(name).data.audio.spectrogram_shape(preset(name).model.img_size)
    # float32 FFT rounding (~1e-6 of the peak) is amplified by the log where |S| is small:
    # 1e-4 where |S| >= 0.1, and on average everywhere.
    assert np.abs(got - ref)[mag >= 0.1].max() < 1e-4
    assert np.abs(got - ref).mean() < 1e-4


@pytest.mark.parametrize("name,shape", [("vggsound", (1, 224, 224)), ("cremad", (1, 224, 224)),
                                        ("ave", (10, 224, 224)), ("synthetic", (1, 112, 112)), ("tiny", (1, 32, 32))])
def test_clip_spectrograms_are_img_size_square(tmp_path, name, shape):
    cfg = preset(name)
    a = cfg.data.audio
    wav = write_wav(tmp_path / "a.wav", seconds=10.0 if name == "ave" else 7.3, rate=a.sample_rate)
    out = clip_spectrograms(wav, a, cfg.model.img_size, cfg.data.frames_per_clip, crop_offset(a, False, None))
    assert tuple(out.shape) == shape and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_config_rejects_spectrogram_of_wrong_size():
    from maavt_fast.config import apply_overrides

    with pytest.raises(ConfigError, match="model.img_size is 112"):
        apply_overrides(preset("synthetic"), {"data.audio.hop": "100"})


@pytest.mark.parametrize("n,offset", [(16000, 0), (16000, 15999), (7001, 12345), (50000, 3), (160000, 80000)])
def test_tiled_window_is_the_release_tile_then_crop(n, offset):
    wave = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    tiled = wave
    while len(tiled) < 160000:  # VGGSound: repeat x2 until >= 10 s, then crop 5 s
        tiled = np.tile(tiled, 2)
    assert np.array_equal(tiled_window(wave, offset, 80000), tiled[offset:offset + 80000])


def test_crop_offset_train_range_and_test_offset():
    a = preset("vggsound").data.audio
    offs = [crop_offset(a, True, np.random.default_rng(i)) for i in range(400)]
    assert min(offs) >= 0 and max(offs) <= 80000 and len(set(offs)) > 350
    assert crop_offset(a, False, None) == 48000
    assert crop_offset(preset("cremad").data.audio, True, np.random.default_rng(0)) == 0  # no random crop


def test_fbank_is_kaldi_with_the_release_arguments():
    a = preset("ave").data.audio
    x = tone(1.0, 16000, 700.0, seed=2)
    ref = kaldi.fbank(torch.from_numpy(x)[None], htk_compat=True, sample_frequency=16000, use_energy=False,
                      window_type="hanning", num_mel_bins=224, dither=0.0, frame_shift=4.4)
    ref = (ref + 4.1426) / (2 * 3.2001)
    got = fbank_spectrogram(x, a, 224)
    assert ref.shape == (223, 224) and got.shape == (224, 224)
    torch.testing.assert_close(got[:223], ref, rtol=0, atol=1e-5)
    assert (got[223] == 0).all()


def test_fbank_windows_follow_linspace_and_remove_mean():
    a = preset("ave").data.audio
    wave = np.arange(160000, dtype=np.float32)
    wins = fbank_windows(wave, a, 10)
    starts = np.linspace(0, 160000 - 17600, 10).astype(int)
    centred = wave - wave.mean()
    assert all(np.array_equal(w, centred[s:s + 16000]) for w, s in zip(wins, starts))


def test_clipped_window_clips_to_unit_range(tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "loud.wav", np.full(16000, 0.9, np.float32), 16000, subtype="FLOAT")
    a = preset("tiny").data.audio
    sf.write(tmp_path / "loud.wav", np.linspace(-3, 3, 16000, dtype=np.float32), 16000, subtype="FLOAT")
    w = clipped_window(tmp_path / "loud.wav", a, 0)
    assert w.min() == -1.0 and w.max() == 1.0 and w.shape == (16000,)


@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
def test_test_transform_is_torchvision_resize_totensor_normalize(interp):
    img = Image.fromarray(picture(61, 83, seed=3))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[interp]
    ref = T.Compose([T.Resize((32, 32), interpolation=mode), T.ToTensor(), T.Normalize(mean, std)])(img)
    got = transform(img, CropFlip.full(61, 83), 32, mean, std, interp)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_train_transform_is_resized_crop_and_flip():
    img = Image.fromarray(picture(64, 80, seed=4))
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    box = CropFlip(8, 10, 40, 48, True)
    ref = T.Compose([T.ToTensor(), T.Normalize(mean, std)])(TF.hflip(TF.resized_crop(img, 8, 10, 40, 48, [32, 32])))
    got = transform(img, box, 32, mean, std)
    # PIL's box-resize may read pixels just outside the box for the filter support; crop-then-resize does not
    diff = (got - ref).abs() * 0.25 * 255
    assert diff.mean() < 0.5 and diff[..., 2:-2, 2:-2].max() <= 1.0 + 1e-4


def test_random_crop_flip_is_torchvision_rrc_distribution():
    h, w = 90, 160
    boxes = [random_crop_flip(h, w, np.random.default_rng(i)) for i in range(500)]
    assert boxes[7] == random_crop_flip(h, w, np.random.default_rng(7))  # seeded
    areas, ratios = [], []
    for b in boxes:
        assert 0 <= b.top and b.top + b.height <= h and 0 <= b.left and b.left + b.width <= w
        areas.append(b.height * b.width / (h * w))
        ratios.append(b.width / b.height)
    # rounding to whole pixels lets area/ratio stray slightly past the sampled bounds
    assert min(areas) >= 0.07 and max(areas) <= 1.0
    assert min(ratios) >= 0.74 and max(ratios) <= 1.35 * (1 + 2 / 20)
    assert 0.4 < np.mean([b.flip for b in boxes]) < 0.6
    assert np.std(areas) > 0.1  # really random
    # no box of >= 8% area fits a 200x10 frame at ratio >= 3/4, so torchvision's centre-crop fallback applies
    tall = random_crop_flip(200, 10, np.random.default_rng(0))
    assert (tall.top, tall.left, tall.height, tall.width) == ((200 - 13) // 2, 0, 13, 10)
