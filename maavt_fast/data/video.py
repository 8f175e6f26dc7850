"""Raw-video mode on the CPU path: probe a video and decode chosen frames with PyAV.

A video stands in for a 1-fps frame folder: 1-fps frame k is the native frame
floor((k + 0.5) * fps) (the frame shown half a second into second k), so `maavt prepare` and
raw-video mode pick the same pictures. Frame numbers count decoded frames in presentation order,
as DALI's video decoder does.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from maavt_fast._extras import requires
from maavt_fast.data.errors import DataError, require_file

with requires("data", __name__):
    from PIL import Image


@dataclass(frozen=True)
class VideoInfo:
    """Frame count, frame rate and frame size of a video's first video stream."""

    frames: int
    fps: float
    height: int
    width: int

    @property
    def seconds(self) -> int:
        """How many 1-fps frames the video stands for (at least 1)."""
        return max(1, int(self.frames / self.fps))

    def native_frame(self, k: int) -> int:
        """Native frame number of 1-fps frame k."""
        return min(self.frames - 1, int(math.floor((k + 0.5) * self.fps)))


def open_video(path: Path):
    """An open PyAV container with a video stream; DataError if missing, empty, unreadable or without video."""
    with requires("data", __name__):
        import av

    require_file(path, "video")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise DataError(path, f"unreadable video ({e})") from None
    if not container.streams.video:
        container.close()
        raise DataError(path, "has no video stream")
    return container


@functools.lru_cache(maxsize=4096)
def probe(path: str | Path) -> VideoInfo:
    """VideoInfo, counting frames by demuxing packets (exact, no decoding)."""
    with requires("data", __name__):
        import av

    path = Path(path)
    container = open_video(path)
    try:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        declared = (float(stream.duration * stream.time_base) if stream.duration
                    else (container.duration or 0) / 1e6)  # seconds, from the headers
        frames = sum(1 for p in container.demux(stream) if p.size)
        height, width = stream.codec_context.height, stream.codec_context.width
    except av.error.FFmpegError as e:
        raise DataError(path, f"corrupt video ({e})") from None
    finally:
        container.close()
    if frames == 0 or fps <= 0:
        raise DataError(path, f"video has {frames} frames at {fps} fps")
    if frames / fps < 0.8 * declared - 2 / fps:
        raise DataError(path, f"truncated video: the header says {declared:.2f} s, the file holds {frames / fps:.2f} s "
                              f"of frames")
    return VideoInfo(frames, fps, height, width)


def yuv_to_rgb(frame) -> np.ndarray:
    """A decoded frame -> (H, W, 3) uint8 RGB the way DALI's video decoder converts it: 4:2:0 chroma
    upsampled bilinearly (centred samples), BT.601 limited-range matrix (FFmpeg's swscale default
    upsampling differs by up to ~90 levels at colour edges)."""
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    h, w = frame.height, frame.width
    y, u, v = (np.frombuffer(p, np.uint8).reshape(-1, p.line_size) for p in frame.planes)
    chroma = torch.from_numpy(np.stack([u[:(h + 1) // 2, :(w + 1) // 2], v[:(h + 1) // 2, :(w + 1) // 2]]))
    chroma = F.interpolate(chroma[None].double(), scale_factor=2, mode="bilinear", align_corners=False)[0, :, :h, :w]
    luma = (torch.from_numpy(y[:h, :w].astype(np.float64)) - 16) * (255 / 219)
    cb, cr = (chroma - 128) * (255 / 224)
    r = luma + 1.402 * cr
    b = luma + 1.772 * cb
    g = (luma - 0.299 * r - 0.114 * b) / 0.587
    return torch.stack([r, g, b], -1).round().clamp(0, 255).to(torch.uint8).numpy()


def read_frames(path: str | Path, numbers: list[int]) -> list[Image.Image]:
    """RGB frames with the given native frame numbers, decoded sequentially from the start."""
    with requires("data", __name__):
        import av

    path = Path(path)
    wanted = sorted(set(numbers))
    got: dict[int, Image.Image] = {}
    container = open_video(path)
    try:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i in wanted:
                got[i] = Image.fromarray(yuv_to_rgb(frame))
            if i >= wanted[-1]:
                break
    except av.error.FFmpegError as e:
        raise DataError(path, f"corrupt or truncated video ({e})") from None
    finally:
        container.close()
    missing = [n for n in wanted if n not in got]
    if missing:
        raise DataError(path, f"truncated video: frame {missing[0]} could not be decoded")
    return [got[n] for n in numbers]
