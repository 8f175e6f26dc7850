"""Clip indexes for the official dataset layouts (docs/model.md#inputs) and a plain CSV manifest.

VGGSound  root/vggsound.csv (youtube_id,start_sec,class_name,split; no header),
          root/frames/{train,test}/Image-01-FPS/<id>_<start:06d>.mp4/*.jpg, root/audio/{train,test}/<id>_<start:06d>.wav
CREMA-D   root/Annotations/{train,test}.csv (clip,emotion), root/AudioWAV/<clip>.wav, root/frames/Image-01-FPS/<clip>/
AVE       root/Annotations.txt (Category&VideoID&Quality&StartTime&EndTime), root/{train,val,test}_order.h5,
          root/labels.h5 (avadataset: (N, 10, 29) one-hot), root/AVE_Dataset/raw_audio/<id>.wav,
          root/AVE_Dataset/video_frames/<id>/*.jpg
csv       a manifest with header split,video_or_frames,audio,label; video_or_frames is a frame folder or a
          video file (raw-video mode); paths are relative to the manifest's folder.
"""
from __future__ import annotations

import csv
import functools
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maavt_fast._extras import requires
from maavt_fast.config import BG_LABEL, DataConfig
from maavt_fast.data.errors import DataError
from maavt_fast.data.sampling import split_rng

log = logging.getLogger(__name__)
_WARNED: set[tuple] = set()  # (root, split, count) of the left-out rows already reported: once per process

CREMAD_CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")  # label order of the release (docs/model.md#inputs)
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VGGSOUND_MIN_FRAMES = 4  # the release keeps a clip only if its frame folder holds more than 3 files
FRAME_RULES = ("center", "first", "spread")


@dataclass(frozen=True)
class Clip:
    """One clip: its media and labels.

    visual: a frame folder or (raw-video mode, `is_video`) a video file. labels: one class index per
    clip, or one per 1-s segment (AVE; background segments are BG_LABEL). frame_rule: which frames
    are shown ("center": the 1-fps frame in the middle of the audio window, VGGSound; "first": the
    first T in sorted order, CREMA-D; "spread": T evenly spaced, AVE).
    """

    visual: Path
    audio: Path
    labels: tuple[int, ...]
    frame_rule: str = "center"
    is_video: bool = False


@dataclass
class Index:
    """The clips of one split, the class names, and the manifest rows that were left out as bad."""

    clips: list[Clip]
    classes: list[str]
    bad_rows: list[DataError] = field(default_factory=list)


def build_index(cfg: DataConfig, split: str, seed: int) -> Index:
    """The clips of `split` ("train" | "val" | "test"); val is held out of train unless cfg.val_is_test."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    if not cfg.root:
        raise DataError("data.root", "is empty: set it to the dataset folder")
    held_out = split != "test" and not cfg.val_is_test and not _has_own_val(cfg)
    source = "test" if (split == "val" and cfg.val_is_test) else ("train" if held_out else split)
    index = _INDEXERS[cfg.dataset](cfg, source)
    if index.bad_rows:
        if not cfg.skip_bad:
            raise index.bad_rows[0]
        log.warning("left out %d bad manifest row(s) of %s; first: %s", len(index.bad_rows), cfg.root,
                    index.bad_rows[0])
    return _hold_out(index, cfg, split, seed) if held_out else index


def class_names(cfg: DataConfig) -> list[str]:
    """Class names in label order (label k is class_names(cfg)[k]): `cfg.classes` when set (a run stores them
    there), else the train split's."""
    return list(cfg.classes) or list(_INDEXERS[cfg.dataset](cfg, "train").classes)


def _natural(name: str) -> tuple:
    """Sort key: numeric names by value (0, 1, 2, 10) before the other names, in string order."""
    text = name.strip()
    return (0, int(text), "") if text.lstrip("-").isdigit() else (1, 0, text)


def class_order(found: set[str], cfg: DataConfig) -> list[str]:
    """Label order of the class names `found` in the data: `cfg.classes` (names it does not know are refused,
    named), else the names sorted (numbers numerically)."""
    if not cfg.classes:
        return sorted(found, key=_natural)
    unknown = sorted(found - set(cfg.classes), key=_natural)
    if unknown:
        raise DataError(cfg.root, f"class(es) {', '.join(map(repr, unknown[:5]))}{' ...' if len(unknown) > 5 else ''} "
                                  f"are not among the {len(cfg.classes)} classes of data.classes (the model's)")
    return list(cfg.classes)


def unique_rows(rows: list, key, label, split, where) -> tuple[list, list[DataError]]:
    """`rows` without repeats of a clip (`key`): an exact repeat (same label and split) is dropped with a
    warning, so a clip can never be in both train and val; a clip listed with another label or in another
    split is a bad row (DataError naming both lines)."""
    first: dict = {}
    kept, conflicts, repeats = [], [], []
    for r in rows:
        f = first.setdefault(key(r), r)
        if f is r:
            kept.append(r)
        elif (label(f), split(f)) == (label(r), split(r)):
            repeats.append(str(where(r)))
        else:
            conflicts.append(DataError(where(r), f"clip {key(r)} is listed as {label(r)!r} ({split(r)}) here and as "
                                                 f"{label(f)!r} ({split(f)}) at {where(f)}"))
    if repeats and tuple(repeats) not in _WARNED:
        _WARNED.add(tuple(repeats))
        log.warning("dropped %d repeated manifest row(s) (same clip, label and split); first: %s", len(repeats),
                    ", ".join(repeats[:3]))
    return kept, conflicts


def _has_own_val(cfg: DataConfig) -> bool:
    """AVE has an official val split; a CSV manifest may have val rows."""
    return cfg.dataset == "ave" or (cfg.dataset == "csv" and any(r["split"] == "val" for r in _csv_rows(cfg.root)[1]))


def _hold_out(index: Index, cfg: DataConfig, split: str, seed: int) -> Index:
    """Split train into (train, val): per class, round(val_fraction * n) clips, seeded."""
    rng = split_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, clip in enumerate(index.clips):
        by_class.setdefault(clip.labels[0], []).append(i)
    held = set()
    for c in sorted(by_class):
        members = by_class[c]
        k = round(cfg.val_fraction * len(members))
        held.update(members[j] for j in rng.permutation(len(members))[:k])
    keep = [clip for i, clip in enumerate(index.clips) if (i in held) == (split == "val")]
    return Index(keep, index.classes, index.bad_rows)


def _count_frames(folder: Path) -> int:
    try:
        return sum(1 for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
    except OSError:
        return 0


def _read_csv(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise DataError(path, "manifest file is missing")
    return [row for row in csv.reader(io.StringIO(_utf8_text(path), newline=""))
            if row and any(cell.strip() for cell in row)]


def _utf8_text(path: Path) -> str:
    """The file's text; DataError naming the file and the line of the first byte that is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(path, f"line {line} is not UTF-8 text ({e.reason}); save the manifest as UTF-8") from None


def _vggsound_rows(root: str) -> tuple[tuple, ...]:
    """(line, name, class_name, split, (frames, audio) | None | DataError) per csv row; None: media absent.

    Cached per process until vggsound.csv or a split's frames/audio folder changes (scanning ~200k
    clip folders takes a while, and the trainer builds loaders every epoch).
    """
    root_p = Path(root)
    return _scan_vggsound(root, _stamp(root_p / "vggsound.csv",
                                       *(root_p / d / s for d in ("frames", "audio") for s in ("train", "test"))))


def _stamp(*paths: Path) -> tuple[int, ...]:
    """Modification times of `paths` (0 if absent): the key that invalidates an index cache."""
    return tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in paths)


@functools.lru_cache(maxsize=8)
def _scan_vggsound(root: str, _stamp: tuple) -> tuple[tuple, ...]:
    root_p = Path(root)
    out = []
    for line, row in enumerate(_read_csv(root_p / "vggsound.csv"), 1):
        where = root_p / f"vggsound.csv:{line}"
        if len(row) < 4:
            out.append((line, "", "", "", DataError(where, f"expected 4 columns youtube_id,start_sec,class_name,"
                                                          f"split, got {len(row)}")))
            continue
        yid, start, cls, split = (c.strip() for c in row[:4])
        try:
            name = f"{yid}_{int(float(start)):06d}"
        except ValueError:
            out.append((line, "", cls, split, DataError(where, f"start_sec {start!r} is not a number")))
            continue
        frames = root_p / "frames" / split / "Image-01-FPS" / f"{name}.mp4"  # a folder, named like the video
        audio = root_p / "audio" / split / f"{name}.wav"
        present = audio.is_file() and _count_frames(frames) >= VGGSOUND_MIN_FRAMES
        out.append((line, name, cls, split, (frames, audio) if present else None))
    return tuple(out)


def _index_vggsound(cfg: DataConfig, split: str) -> Index:
    rows = _vggsound_rows(cfg.root)
    bad = [r[4] for r in rows if isinstance(r[4], DataError)]
    media, conflicts = unique_rows([r for r in rows if isinstance(r[4], tuple)], key=lambda r: r[1],
                                   label=lambda r: r[2], split=lambda r: r[3],
                                   where=lambda r: Path(cfg.root) / f"vggsound.csv:{r[0]}")
    bad += conflicts
    classes = class_order({r[2] for r in media if r[3] == "train"}, cfg)
    lookup = {c: i for i, c in enumerate(classes)}
    clips = []
    for line, name, cls, row_split, (frames, audio) in media:
        if row_split != split:
            continue
        if cls not in lookup:
            bad.append(DataError(Path(cfg.root) / f"vggsound.csv:{line}", f"class {cls!r} has no train clips "
                                 f"(unknown class)"))
            continue
        clips.append(Clip(frames, audio, (lookup[cls],)))
    absent = [r[1] for r in rows if r[4] is None and r[3] == split]
    if absent and (cfg.root, split, len(absent)) not in _WARNED:
        _WARNED.add((cfg.root, split, len(absent)))
        log.warning("vggsound %s: %d csv row(s) have no audio or fewer than %d frames on disk and are left out "
                    "(as in the release); first: %s", split, len(absent), VGGSOUND_MIN_FRAMES, ", ".join(absent[:3]))
    return Index(clips, classes, bad)


def _index_cremad(cfg: DataConfig, split: str) -> Index:
    root = Path(cfg.root)
    path = root / "Annotations" / f"{split}.csv"
    lookup = {c: i for i, c in enumerate(CREMAD_CLASSES)}
    clips, bad = [], []
    for line, row in enumerate(_read_csv(path), 1):
        if line == 1 and len(row) >= 2 and row[1].strip().lower() in ("emotion", "label", "class"):
            continue  # header
        where = Path(f"{path}:{line}")
        if len(row) < 2:
            bad.append(DataError(where, f"expected 2 columns clip,emotion, got {len(row)}"))
        elif row[1].strip() not in lookup:
            bad.append(DataError(where, f"unknown class {row[1].strip()!r}; expected one of {', '.join(CREMAD_CLASSES)}"))
        else:
            clip = row[0].strip()
            clips.append(Clip(root / "frames" / "Image-01-FPS" / clip, root / "AudioWAV" / f"{clip}.wav",
                              (lookup[row[1].strip()],), frame_rule="first"))
    return Index(clips, list(CREMAD_CLASSES), bad)


def _ave_tables(root: str) -> tuple[list[str], list[str], np.ndarray]:
    """(video ids, categories, labels (N, 10, C + 1) one-hot) of an AVE root."""
    return _read_ave_tables(root, _stamp(Path(root) / "Annotations.txt", Path(root) / "labels.h5"))


@functools.lru_cache(maxsize=4)
def _read_ave_tables(root: str, _stamp: tuple) -> tuple[list[str], list[str], np.ndarray]:
    with requires("data", __name__):
        import h5py
    root_p = Path(root)
    ann = root_p / "Annotations.txt"
    if not ann.is_file():
        raise DataError(ann, "AVE annotation file is missing")
    rows = [line.rstrip("\n").split("&") for line in ann.read_text().splitlines() if line.strip()]
    if rows and rows[0][0].strip().lower() == "category":
        rows = rows[1:]
    for i, r in enumerate(rows):
        if len(r) < 2:
            raise DataError(ann, f"line {i + 2}: expected Category&VideoID&..., got {'&'.join(r)!r}")
    labels = _read_h5(root_p / "labels.h5", "avadataset")
    if labels.ndim != 3 or len(labels) != len(rows):
        raise DataError(root_p / "labels.h5", f"avadataset has shape {labels.shape}, expected ({len(rows)}, T, C+1) "
                        f"to match {len(rows)} rows of Annotations.txt")
    return [r[1].strip() for r in rows], [r[0].strip() for r in rows], labels


def _read_h5(path: Path, key: str) -> np.ndarray:
    with requires("data", __name__):
        import h5py

    if not path.is_file():
        raise DataError(path, "file is missing")
    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise DataError(path, f"has no dataset {key!r} (has {', '.join(f.keys())})")
            return np.asarray(f[key])
    except OSError as e:
        raise DataError(path, f"unreadable HDF5 ({e})") from None


def _index_ave(cfg: DataConfig, split: str) -> Index:
    """Every 1-s segment is a sample; the last one-hot column (background) maps to BG_LABEL (docs/model.md#inputs)."""
    ids, categories, labels = _ave_tables(cfg.root)
    n_fg = labels.shape[2] - 1
    classes: list[str | None] = [None] * n_fg
    for cat, lab in zip(categories, labels):
        for k in {int(a) for a in lab.argmax(-1) if a < n_fg}:
            if classes[k] not in (None, cat):
                raise DataError(Path(cfg.root) / "labels.h5", f"class {k} is both {classes[k]!r} and {cat!r}")
            classes[k] = cat
    order = _read_h5(Path(cfg.root) / f"{split}_order.h5", "order").astype(np.int64).reshape(-1)
    frames_root = Path(cfg.root) / "AVE_Dataset" / "video_frames"
    audio_root = Path(cfg.root) / "AVE_Dataset" / "raw_audio"
    clips, bad = [], []
    for i in order:
        if not 0 <= i < len(ids):
            bad.append(DataError(Path(cfg.root) / f"{split}_order.h5", f"index {i} is out of range [0, {len(ids)})"))
            continue
        seg = tuple(int(a) if a < n_fg else BG_LABEL for a in labels[i].argmax(-1))
        clips.append(Clip(frames_root / ids[i], audio_root / f"{ids[i]}.wav", seg, frame_rule="spread"))
    return Index(clips, [c if c is not None else f"class_{k}" for k, c in enumerate(classes)], bad)


def _csv_rows(root: str) -> tuple[Path, list[dict]]:
    """(manifest path, rows as dicts with the four columns checked)."""
    path = Path(root)
    if path.is_dir():
        path = path / "manifest.csv"
    return _read_csv_rows(path, _stamp(path))


@functools.lru_cache(maxsize=8)
def _read_csv_rows(path: Path, _stamp: tuple) -> tuple[Path, list[dict]]:
    if not path.is_file():
        raise DataError(path, "manifest file is missing")
    reader = csv.DictReader(io.StringIO(_utf8_text(path), newline=""))
    missing = [c for c in ("split", "video_or_frames", "audio", "label") if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)}; the header must be "
                              f"split,video_or_frames,audio,label")
    rows = [dict(r, _line=str(line)) for line, r in enumerate(reader, 2)]
    return path, rows


def _index_csv(cfg: DataConfig, split: str) -> Index:
    path, rows = _csv_rows(cfg.root)
    base = path.parent
    bad, good = [], []
    for r in rows:
        where = Path(f"{path}:{r['_line']}")
        empty = [c for c in ("split", "video_or_frames", "audio", "label") if not (r.get(c) or "").strip()]
        if empty:
            bad.append(DataError(where, f"empty column(s) {', '.join(empty)}"))
        elif r["split"].strip() not in ("train", "val", "test"):
            bad.append(DataError(where, f"split {r['split']!r} is not train, val or test"))
        else:
            good.append(r)
    good, conflicts = unique_rows(good, key=lambda r: (r["video_or_frames"].strip(), r["audio"].strip()),
                                  label=lambda r: r["label"].strip(), split=lambda r: r["split"].strip(),
                                  where=lambda r: Path(f"{path}:{r['_line']}"))
    bad += conflicts
    classes = class_order({r["label"].strip() for r in good}, cfg)
    lookup = {c: i for i, c in enumerate(classes)}
    rule = "center" if cfg.frames_per_clip == 1 else "spread"
    clips = []
    for r in good:
        if r["split"].strip() != split:
            continue
        visual = base / r["video_or_frames"].strip()
        is_video = not visual.is_dir() and visual.suffix.lower() in VIDEO_SUFFIXES
        clips.append(Clip(visual, base / r["audio"].strip(), (lookup[r["label"].strip()],), rule, is_video))
    return Index(clips, classes, bad)


_INDEXERS = {"vggsound": _index_vggsound, "cremad": _index_cremad, "ave": _index_ave, "csv": _index_csv}
