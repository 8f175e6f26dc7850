"""Waveform -> log-spectrogram, the CPU reference that the DALI path must match (docs/model.md#inputs).

Shapes: a waveform is (n,) float32; `stft_spectrogram` returns (n_fft // 2 + 1, 1 + n // hop) float32
(frequency x time); `fbank_spectrogram` returns (img_size, img_size) float32 (time x mel, as AVE's release).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from maavt_fast._extras import requires
from maavt_fast.config import AudioConfig
from maavt_fast.data.errors import DataError, require_file

with requires("data", __name__):
    import soundfile as sf

LOG_EPS = 1e-7  # log(|S| + LOG_EPS)
STD_EPS = 1e-9  # (x - mean) / (std + STD_EPS)


def read_wav(path: str | Path, sample_rate: int) -> np.ndarray:
    """The mono waveform of an audio file, (n,) float32 in [-1, 1]; DataError if unusable."""
    path = require_file(path, "audio")
    try:
        with sf.SoundFile(str(path)) as f:
            rate, frames = f.samplerate, f.frames
            wave = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise DataError(path, f"unreadable audio ({e})") from None
    if rate != sample_rate:
        raise DataError(path, f"sample rate is {rate} Hz, expected {sample_rate} Hz (resample it, e.g. `maavt prepare`)")
    declared = wav_declared_frames(path)
    if declared is not None and declared > frames:
        raise DataError(path, f"truncated audio: the header says {declared} frames, the file holds {frames}")
    if len(wave) == 0:
        raise DataError(path, "audio file holds no samples")
    if not np.isfinite(wave).all():
        raise DataError(path, "audio holds NaN or infinite samples")
    return wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]


def wav_declared_frames(path: Path) -> int | None:
    """Frames a RIFF/WAVE file's `data` chunk header declares (None if not a plain WAV); libsndfile
    silently reads what is there, so this is how a truncated WAV is recognised."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            size = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"fmt ":
                fmt = f.read(size + size % 2)
                block_align = int.from_bytes(fmt[12:14], "little")
            elif chunk[:4] == b"data":
                return size // block_align if block_align and size != 0xFFFFFFFF else None
            else:
                f.seek(size + size % 2, 1)


def crop_offset(cfg: AudioConfig, train: bool, rng: np.random.Generator) -> int:
    """Start sample of the audio window: uniform in [0, tile_to - window] (train) or the fixed test offset."""
    if train and cfg.train_random_crop:
        high = round(cfg.tile_to_seconds * cfg.sample_rate) - cfg.window_samples
        return int(rng.integers(0, high + 1))
    return round(cfg.test_offset_seconds * cfg.sample_rate)


def tiled_window(wave: np.ndarray, offset: int, length: int) -> np.ndarray:
    """wave[(offset + j) mod len(wave)] for j < length: the release's tile-then-crop, (length,) float32."""
    idx = (offset + np.arange(length)) % len(wave)
    return wave[idx]


def clipped_window(path: str | Path, cfg: AudioConfig, offset: int) -> np.ndarray:
    """The STFT input of a clip: its tiled window at `offset`, clipped to [-1, 1], (window_samples,) float32."""
    wave = tiled_window(read_wav(path, cfg.sample_rate), offset, cfg.window_samples)
    return np.clip(wave, -1.0, 1.0).astype(np.float32, copy=False)


def hann(n_fft: int) -> torch.Tensor:
    """The periodic Hann window librosa/scipy use for the STFT, (n_fft,) float32."""
    return torch.hann_window(n_fft, periodic=True, dtype=torch.float32)


def stft_spectrogram(window: np.ndarray, cfg: AudioConfig) -> torch.Tensor:
    """(n,) waveform in [-1, 1] -> standardised log |STFT|, (n_fft // 2 + 1, 1 + n // hop) float32."""
    x = torch.from_numpy(window)
    spec = torch.stft(x, cfg.n_fft, hop_length=cfg.hop, win_length=cfg.n_fft, window=hann(cfg.n_fft),
                      center=True, pad_mode=cfg.pad_mode, return_complex=True).abs()
    return standardise(torch.log(spec + LOG_EPS))


def standardise(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / (std + 1e-9) over the whole tensor, population std (numpy's np.std)."""
    return (x - x.mean()) / (x.std(correction=0) + STD_EPS)


def fbank_windows(wave: np.ndarray, cfg: AudioConfig, count: int) -> list[np.ndarray]:
    """AVE's `count` windows of `window_seconds`: mean removed, starts at linspace(0, n - 1.1 window, count)."""
    wave = wave - wave.mean()
    length = cfg.window_samples
    if len(wave) <= round(1.1 * length):
        return [wave] * count
    starts = np.linspace(0, len(wave) - round(1.1 * length), count).astype(np.int64)
    return [wave[s:s + length] for s in starts]


def fbank_spectrogram(window: np.ndarray, cfg: AudioConfig, img_size: int) -> torch.Tensor:
    """(n,) waveform -> AVE's normalised Kaldi fbank, (img_size time, img_size mel) float32."""
    with requires("data", __name__):
        import torchaudio.compliance.kaldi as kaldi

    ms = 1000.0 / cfg.sample_rate
    feats = kaldi.fbank(torch.from_numpy(window.astype(np.float32))[None], htk_compat=True, use_energy=False,
                        window_type="hanning", num_mel_bins=img_size, dither=0.0, sample_frequency=cfg.sample_rate,
                        frame_length=cfg.n_fft * ms, frame_shift=cfg.hop * ms)
    feats = (feats - cfg.fbank_mean) / (2 * cfg.fbank_std)
    pad = img_size - feats.shape[0]
    return torch.nn.functional.pad(feats, (0, 0, 0, pad)) if pad > 0 else feats[:img_size]


def clip_spectrograms(path: str | Path, cfg: AudioConfig, img_size: int, frames: int, offset: int) -> torch.Tensor:
    """All spectrograms of one clip, (frames, img_size, img_size) float32.

    stft: one window at `offset`, repeated for each of `frames` (T = 1 in VGGSound/CREMA-D);
    fbank: AVE's `frames` one-second windows.
    """
    if cfg.features == "fbank":
        wave = read_wav(path, cfg.sample_rate)
        return torch.stack([fbank_spectrogram(w, cfg, img_size) for w in fbank_windows(wave, cfg, frames)])
    spec = stft_spectrogram(clipped_window(path, cfg, offset), cfg)
    return spec.expand(frames, *spec.shape).contiguous()
