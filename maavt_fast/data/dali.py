"""The DALI decode path: the same plans as the CPU loader, decoded by NVIDIA DALI.

Host side (a parallel external source, `py_num_workers` processes): `plan_sample`, read the encoded
JPEG/video bytes, read the WAV and cut the audio window (the modular tile-and-crop of audio.py; fbank
features for AVE are computed here too). DALI side: fn.decoders.image (device "mixed" on a GPU, "cpu"
with device_id=None) or fn.decoders.video (raw-video mode), fn.resize with the plan's crop box as ROI,
fn.crop_mirror_normalize (flip, normalise, HWC -> CHW), fn.spectrogram -> log -> per-clip
standardisation. The batches of a rank are exactly the CPU loader's (same keys), so sharding, resume
and the last-batch policy (drop_last, or padding with valid=False) are shared with loader.py.
On the CPU (device_id=None) videos in codecs DALI's CPU decoder cannot read (H.264, HEVC, MPEG-4) are
refused when the loader is built, not on the first batch.
"""
from __future__ import annotations

import numpy as np
import torch

from maavt_fast._extras import requires
from maavt_fast.data.audio import LOG_EPS, STD_EPS, clip_spectrograms, clipped_window, hann
from maavt_fast.data.dataset import ClipDataset
from maavt_fast.data.errors import DataError, require_file
from maavt_fast.data.image import image_size
from maavt_fast.data.loader import Batch, Loader
from maavt_fast.data.video import open_video


_END_MARKERS = {b"\xff\xd8": (b"\xff\xd9", 64), b"\x89P": (b"IEND", 16)}  # JPEG, PNG: (end marker, within)


def _bytes(path, kind: str) -> np.ndarray:
    """The encoded bytes of a media file, (n,) uint8. A JPEG/PNG without its end marker is refused here:
    DALI's decoders fill a truncated image with grey instead of failing (PIL fails, as it should)."""
    data = np.fromfile(require_file(path, kind), dtype=np.uint8)
    raw = data[:2].tobytes()
    if raw in _END_MARKERS:
        marker, within = _END_MARKERS[raw]
        if marker not in data[-within:].tobytes():
            raise DataError(path, "corrupt or truncated image (no end marker)")
    return data


# Codecs DALI's CPU video decoder refuses ("Codec 27 (h264) is not supported by the CPU variant"; DALI 2.4,
# checked for h264, hevc, mpeg4 refused and vp8, vp9, mjpeg decoded); its GPU decoder (NVDEC) reads them.
CPU_UNDECODABLE = {"h264": "H.264", "hevc": "HEVC", "mpeg4": "MPEG-4 Part 2"}


def video_codec(path) -> str | None:
    """FFmpeg's name of the codec of a video's first video stream; None for a file that cannot be opened
    (the loader reports it, or skips it with skip_bad, when it gets there)."""
    try:
        container = open_video(path)
    except DataError:
        return None
    try:
        return container.streams.video[0].codec_context.name
    finally:
        container.close()


def check_cpu_decodable(videos: list) -> None:
    """DataError, before any batch, if a video (the first of each file suffix) is in a codec DALI's CPU decoder
    cannot decode, saying the way out."""
    first_by_suffix: dict[str, object] = {}
    for path in videos:
        first_by_suffix.setdefault(path.suffix.lower(), path)
    for path in first_by_suffix.values():
        codec = video_codec(path)
        if codec in CPU_UNDECODABLE:
            raise DataError(path, f"DALI's CPU video decoder cannot decode {CPU_UNDECODABLE[codec]} ({codec}) "
                                  "video: use --data.decode cpu, or decode on a GPU")


class HostSource:
    """Callable external source: BatchInfo -> per-output lists of numpy arrays for one batch.

    Outputs: T encoded frames (or one encoded video + its (T,) frame numbers), per frame a ROI start,
    ROI end and flip (train augmentation only), the audio (one (W,) window for stft, or (T, S, S)
    fbank features), label (T,), index (1,), valid (1,). Bad samples are dropped with skip_bad.
    """

    def __init__(self, dataset: ClipDataset, batches: list, video_mode: bool, augment: bool):
        self.dataset, self.batches, self.video_mode, self.augment = dataset, batches, video_mode, augment

    def sample(self, key) -> list[np.ndarray]:
        epoch, index, valid = key
        ds = self.dataset
        plan = ds.plan(index, epoch)
        t = ds.cfg.frames_per_clip
        if plan.is_video != self.video_mode:
            raise DataError(plan.visual, "DALI needs all clips of a dataset to be videos, or all frame folders")
        if self.video_mode:
            visual = [_bytes(plan.visual, "video"), np.asarray(plan.frame_numbers, dtype=np.int32)]
        else:
            if plan.boxes is None:  # the plan did not read the headers: catch non-images here, not in DALI
                for f in plan.frame_files:
                    image_size(f)
            visual = [_bytes(f, "image") for f in plan.frame_files]
        rois = []
        for box in plan.boxes or []:  # present exactly when self.augment
            rois += [np.array([box.top, box.left], np.float32),
                     np.array([box.top + box.height, box.left + box.width], np.float32),
                     np.array(int(box.flip), np.int32)]
        acfg = ds.cfg.audio
        if acfg.features == "fbank":
            audio = clip_spectrograms(plan.audio, acfg, ds.img_size, t, plan.offset).numpy()
        else:
            audio = clipped_window(plan.audio, acfg, plan.offset)
        return visual + rois + [audio, np.asarray(plan.labels, np.int64), np.array([index], np.int64),
                                np.array([valid])]

    def __call__(self, info):
        if info.iteration >= len(self.batches):
            raise StopIteration
        samples = []
        for key in self.batches[info.iteration]:
            try:
                samples.append(self.sample(key))
            except DataError:
                if not self.dataset.cfg.skip_bad:
                    raise
        if not samples:
            raise DataError(self.dataset.cfg.root, f"every sample of batch {info.iteration} is bad")
        return tuple(list(col) for col in zip(*samples))


def build_pipeline(source: HostSource, batch_size: int, num_workers: int, device_id: int | None):
    """The DALI pipeline for `source`; outputs image (T,3,S,S), audio (T,S,S), label, index, valid."""
    with requires("dali", __name__):
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali import math as dmath

    ds = source.dataset
    cfg, s, t = ds.cfg, ds.img_size, ds.cfg.frames_per_clip
    gpu = device_id is not None
    n_visual = 2 if source.video_mode else t
    n_roi = 3 * t if source.augment else 0
    interp = {"bilinear": types.INTERP_LINEAR, "bicubic": types.INTERP_CUBIC}[cfg.image_interp]

    @pipeline_def(batch_size=batch_size, num_threads=max(1, num_workers), device_id=device_id,
                  py_num_workers=max(1, num_workers), py_start_method="spawn" if gpu else "fork",
                  prefetch_queue_depth=2, exec_dynamic=True)
    def pipe():
        outs = fn.external_source(source=source, num_outputs=n_visual + n_roi + 4, batch=True, batch_info=True,
                                  parallel=num_workers > 0)
        visual, rois, (audio, label, index, valid) = outs[:n_visual], outs[n_visual:n_visual + n_roi], outs[-4:]
        if source.video_mode:
            clip = fn.decoders.video(visual[0], device="mixed" if gpu else "cpu", frames=visual[1])
            frames = [clip[i] for i in range(t)]
        else:
            frames = [fn.decoders.image(v, device="mixed" if gpu else "cpu", output_type=types.RGB) for v in visual]
        images = []
        for i, frame in enumerate(frames):
            kw = dict(roi_start=rois[3 * i], roi_end=rois[3 * i + 1]) if source.augment else {}
            frame = fn.resize(frame, size=[s, s], interp_type=interp, antialias=True, **kw)
            images.append(fn.crop_mirror_normalize(
                frame, dtype=types.FLOAT, output_layout="CHW", mirror=rois[3 * i + 2] if source.augment else 0,
                mean=[255 * m for m in cfg.image_mean], std=[255 * v for v in cfg.image_std]))
        if cfg.audio.features == "stft":
            a = cfg.audio
            wave = audio.gpu() if gpu else audio
            spec = fn.spectrogram(wave, nfft=a.n_fft, window_length=a.n_fft, window_step=a.hop,
                                  window_fn=hann(a.n_fft).tolist(), center_windows=True,
                                  reflect_padding=a.pad_mode == "reflect", power=1, layout="ft")
            spec = dmath.log(spec + LOG_EPS)
            mean = fn.reductions.mean(spec)
            spec = (spec - mean) / (fn.reductions.std_dev(spec, mean) + STD_EPS)
            audio = fn.stack(*([spec] * t))
        elif gpu:
            audio = audio.gpu()
        return fn.stack(*images), audio, label, index, valid

    p = pipe()
    p.build()
    return p


def _to_torch(tl) -> torch.Tensor:
    """A torch copy (same device) of a dense DALI TensorList; DALI reuses its buffers on the next run."""
    return torch.from_dlpack(tl.as_tensor()).clone()


def _as_data_error(e: Exception, files: list) -> DataError:
    """A DataError for a failed pipeline run: the host source's own DataError (re-raised by DALI as text
    from a parallel worker), else DALI's reason (the line after "encountered:") naming the batch's files."""
    if isinstance(e, DataError):
        return e
    text = str(e)
    ours = [line for line in text.splitlines() if "DataError: " in line]
    if ours:
        path, _, problem = ours[-1].split("DataError: ", 1)[1].partition(": ")
        return DataError(path, problem)
    reason = (text.split("encountered:", 1)[-1].strip().splitlines() or [text])[0][:300]
    return DataError(", ".join(map(str, files)), f"DALI failed on this batch: {reason}")


class DaliLoader(Loader):
    """`Loader` whose batches are decoded by a DALI pipeline built per iteration (per epoch)."""

    def __init__(self, dataset, batch_size, seed, rank, world_size, epoch, start_batch, drop_last, num_workers,
                 device_id: int | None):
        super().__init__(dataset, batch_size, seed, rank, world_size, epoch, start_batch, drop_last, num_workers)
        self.device_id = device_id
        clips = dataset.clips
        self.video_mode = bool(clips) and clips[0].is_video
        if any(c.is_video != self.video_mode for c in clips):
            raise DataError(dataset.cfg.root, "the DALI path needs all clips to be videos, or all frame folders")
        if self.video_mode and device_id is None:
            check_cpu_decodable([c.visual for c in clips])

    def __iter__(self):
        batches = self.batch_keys()
        if not batches:
            return
        train_aug = self.dataset.train and self.dataset.cfg.train_augment
        source = HostSource(self.dataset, batches, self.video_mode, train_aug)
        pipe = build_pipeline(source, self.batch_size, self.num_workers, self.device_id)
        try:
            for position, keys in enumerate(batches, start=self.start_batch + 1):
                self.position = position
                try:
                    image, audio, label, index, valid = pipe.run()
                except Exception as e:  # DALI re-raises worker errors as plain Exception / RuntimeError
                    raise _as_data_error(e, [self.dataset.clips[k[1]].visual for k in keys]) from None
                batch = Batch(audio=_to_torch(audio), image=_to_torch(image), label=_to_torch(label),
                              index=_to_torch(index).view(-1), valid=_to_torch(valid).view(-1))
                self.skipped += len(keys) - len(batch)
                yield batch
        finally:
            del pipe
