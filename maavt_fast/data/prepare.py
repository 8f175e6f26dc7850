"""`prepare_videos` (`maavt prepare`): raw videos -> the official layout, with PyAV, in parallel, resumable.

videos_dir/<sub>/<name>.<ext> -> out_dir/frames/<sub>/Image-01-FPS/<name>.<ext>/00000k.jpg (1-fps frame k is
native frame floor((k + 0.5) fps), see video.py; k from 1) and out_dir/audio/<sub>/<name>.wav (16 kHz mono
PCM16). audio_only=True writes only the WAV (raw-video mode reads frames from the videos). A clip whose
outputs exist (a `.done` marker) is skipped; failures are collected with their reasons, never fatal.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maavt_fast._extras import requires
from maavt_fast.data.errors import DataError
from maavt_fast.data.manifests import VIDEO_SUFFIXES
from maavt_fast.progress import progress

with requires("data", __name__):
    import soundfile as sf

SAMPLE_RATE = 16000


@dataclass
class PrepareSummary:
    """What `prepare_videos` did: done and skipped video paths, failed ones with the reason."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"prepared {len(self.done)}, already done {len(self.skipped)}, failed {len(self.failed)}"]
        lines += [f"  {path}: {why}" for path, why in sorted(self.failed.items())]
        return "\n".join(lines)


def _outputs(video: Path, videos_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    sub = video.parent.relative_to(videos_dir)
    return out_dir / "frames" / sub / "Image-01-FPS" / video.name, out_dir / "audio" / sub / f"{video.stem}.wav"


def extract_audio(video: Path, wav: Path) -> None:
    """The first audio stream of `video` as 16 kHz mono PCM16 WAV; DataError if there is none."""
    with requires("data", __name__):
        import av

    from maavt_fast.data.video import open_video

    with open_video(video) as container:
        if not container.streams.audio:
            raise DataError(video, "has no audio stream")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        chunks = []
        for frame in container.decode(container.streams.audio[0]):
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    if not chunks:
        raise DataError(video, "audio stream decodes to no samples")
    wav.parent.mkdir(parents=True, exist_ok=True)
    sf.write(wav, np.concatenate(chunks), SAMPLE_RATE, subtype="PCM_16")


def extract_frames(video: Path, folder: Path) -> int:
    """1-fps JPEG frames of `video` into `folder`; returns how many."""
    from maavt_fast.data.video import probe, read_frames

    info = probe(video)
    numbers = [info.native_frame(k) for k in range(info.seconds)]
    folder.mkdir(parents=True, exist_ok=True)
    for k, img in enumerate(read_frames(video, numbers), 1):
        img.save(folder / f"{k:06d}.jpg", quality=95)
    return len(numbers)


def _prepare_one(video: Path, videos_dir: Path, out_dir: Path, audio_only: bool) -> tuple[str, str]:
    """('done' | 'skipped' | 'failed', reason) for one video."""
    with requires("data", __name__):
        import av

    frames, wav = _outputs(video, videos_dir, out_dir)
    marker = wav.with_suffix(".audio.done" if audio_only else ".done")
    if marker.exists():
        return "skipped", ""
    try:
        extract_audio(video, wav)
        if not audio_only:
            extract_frames(video, frames)
    except DataError as e:
        return "failed", e.problem
    except (av.error.FFmpegError, OSError, ValueError) as e:
        return "failed", f"{type(e).__name__}: {e}"
    marker.touch()
    return "done", ""


def prepare_videos(videos_dir: str | Path, out_dir: str | Path, workers: int = 2,
                   audio_only: bool = False, show_progress: bool = False) -> PrepareSummary:
    """Convert every video under `videos_dir` (recursively); returns the summary. `show_progress`: a bar
    on a terminal, else a line per 10% on stdout."""
    videos_dir, out_dir = Path(videos_dir), Path(out_dir)
    if not videos_dir.is_dir():
        raise DataError(videos_dir, "videos folder is missing")
    videos = sorted(p for p in videos_dir.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    summary = PrepareSummary()
    args = [(v, videos_dir, out_dir, audio_only) for v in videos]
    if workers > 1 and len(videos) > 1:
        with ProcessPoolExecutor(min(workers, os.cpu_count() or 1)) as pool:
            results = list(progress(pool.map(_prepare_one, *zip(*args)), len(args), "prepare", show_progress))
    else:
        results = [_prepare_one(*a) for a in progress(args, len(args), "prepare", show_progress)]
    for v, (status, why) in zip(videos, results):
        key = str(v.relative_to(videos_dir))
        if status == "failed":
            summary.failed[key] = why
        else:
            getattr(summary, status).append(key)
    return summary
