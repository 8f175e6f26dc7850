"""Dataset indexes: the official layouts, class names, held-out validation, labels (docs/model.md#inputs)."""
from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch
from test_data_media import csv_manifest, one_thread, tiny_ave, tiny_cremad, tiny_csv, tiny_vggsound  # noqa: F401

from maavt_fast.config import BG_LABEL, preset
from maavt_fast.data import DataError, build_dataset, class_names
from maavt_fast.data.image import CropFlip, open_image, transform
from maavt_fast.data.manifests import build_index

pytestmark = pytest.mark.usefixtures("one_thread")


def test_vggsound_index_classes_and_items(tmp_path):
    cfg = tiny_vggsound(tmp_path / "v", classes=3, clips=4)
    names = class_names(cfg)
    assert names == sorted(names) and len(names) == 3
    train, test = build_dataset(cfg, "train", 32, 0), build_dataset(cfg, "test", 32, 0)
    assert len(train) + len(build_dataset(cfg, "val", 32, 0)) == 9 and len(test) == 3
    item = test[(0, 0)]
    assert item["audio"].shape == (1, 32, 32) and item["image"].shape == (1, 3, 32, 32)
    assert item["label"].dtype == torch.int64 and item["label"].shape == (1,) and item["index"] == 0
    # the label is the sorted position of the csv class name
    rows = {r[0]: r[2] for r in csv.reader(open(tmp_path / "v" / "vggsound.csv"))}
    clip = test.clips[0]
    assert names[int(item["label"])] == rows[clip.audio.stem.rsplit("_", 1)[0]]


def test_vggsound_rows_without_media_are_left_out_like_the_release(tmp_path):
    cfg = tiny_vggsound(tmp_path / "v", classes=2, clips=4)
    test = build_index(cfg, "test", 0).clips
    test[0].audio.unlink()  # a clip never downloaded
    frames = sorted(test[1].visual.iterdir())
    for f in frames[1:]:  # the release needs more than 3 frames
        f.unlink()
    with open(tmp_path / "v" / "vggsound.csv", "a") as f:
        f.write("neverdownloaded,30,disc_red,test\n")
    assert len(build_dataset(cfg, "test", 32, 0)) == len(test) - 2


def test_vggsound_test_class_unknown_to_train_is_an_error(tmp_path):
    cfg = tiny_vggsound(tmp_path / "v", classes=2, clips=4)
    clip = build_index(cfg, "test", 0).clips[0]
    stem = "zzz_000007"
    shutil.copytree(clip.visual, clip.visual.parent / f"{stem}.mp4")
    shutil.copy(clip.audio, clip.audio.parent / f"{stem}.wav")
    with open(tmp_path / "v" / "vggsound.csv", "a") as f:
        f.write("zzz,7,a_class_with_no_train_clips,test\n")
    with pytest.raises(DataError, match=r"vggsound.csv:9: class 'a_class_with_no_train_clips' .*unknown class"):
        build_dataset(cfg, "test", 32, 0)
    cfg.skip_bad = True
    from maavt_fast.data import build_loader

    loader = build_loader(cfg, "test", 32, 2, seed=0)
    assert sum(len(b) for b in loader) == 2 and loader.skipped == 1


def test_val_is_held_out_of_train_seeded_and_stratified(tmp_path):
    cfg = tiny_vggsound(tmp_path / "v", classes=3, clips=8)  # 6 train clips per class
    cfg.val_fraction = 0.34
    train, val = build_index(cfg, "train", 5).clips, build_index(cfg, "val", 5).clips
    cfg.val_fraction = 0.0
    everything = build_index(cfg, "train", 5).clips
    assert not set(train) & set(val) and set(train) | set(val) == set(everything)
    assert sorted(c.labels[0] for c in val) == [0, 0, 1, 1, 2, 2]
    cfg.val_fraction = 0.34
    assert build_index(cfg, "val", 5).clips == val
    assert any(build_index(cfg, "val", s).clips != val for s in (6, 7, 8))
    cfg.val_is_test = True
    assert build_index(cfg, "val", 5).clips == build_index(cfg, "test", 5).clips
    assert len(build_index(cfg, "train", 5).clips) == len(everything)


def test_cremad_labels_and_first_sorted_frame(tmp_path):
    cfg = tiny_cremad(tmp_path / "c")
    assert class_names(cfg) == ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
    test = build_dataset(cfg, "test", 224, 0)  # header row skipped
    assert len(test) == 2
    item = test[(0, 0)]
    assert item["label"].tolist() == [5] and item["audio"].shape == (1, 224, 224)
    expect = transform(open_image(tmp_path / "c/frames/Image-01-FPS/1001_DFA_ANG_XX/frame_a.jpg"),
                       CropFlip.full(48, 64), 224, cfg.image_mean, cfg.image_std)
    torch.testing.assert_close(item["image"][0], expect, rtol=0, atol=0)


def test_cremad_unknown_emotion_names_the_row(tmp_path):
    cfg = tiny_cremad(tmp_path / "c")
    with open(tmp_path / "c/Annotations/test.csv", "a") as f:
        f.write("1009_XXX,BORED\n")
    with pytest.raises(DataError, match=r"test.csv:4: unknown class 'BORED'"):
        build_dataset(cfg, "test", 224, 0)


def test_ave_segments_background_and_spread_frames(tmp_path):
    cfg = tiny_ave(tmp_path / "a")
    assert class_names(cfg) == ["Church bell", "Violin", "Dog"]
    val = build_dataset(cfg, "val", 32, 0)
    assert [len(build_dataset(cfg, s, 32, 0)) for s in ("train", "val", "test")] == [2, 1, 1]
    item = val[(0, 0)]
    assert item["label"].tolist() == [BG_LABEL] * 2 + [0] * 4 + [BG_LABEL] * 4
    assert item["audio"].shape == (10, 32, 32) and item["image"].shape == (10, 3, 32, 32)
    # frames linspace(1, 12, 10) of the 12 files, bicubic resize, no augmentation even in train
    picks = [int(p) for p in np.linspace(1, 12, 10)]
    expect = torch.stack([transform(open_image(tmp_path / f"a/AVE_Dataset/video_frames/vid002/{k:06d}.jpg"),
                                    CropFlip.full(24, 32), 32, cfg.image_mean, cfg.image_std, "bicubic")
                          for k in picks])
    torch.testing.assert_close(item["image"], expect, rtol=0, atol=0)
    train = build_dataset(cfg, "train", 32, 0)
    torch.testing.assert_close(train[(0, 1)]["image"], train[(3, 1)]["image"], rtol=0, atol=0)


def test_csv_manifest_missing_column_and_empty_cell(tmp_path):
    cfg = tiny_csv(tmp_path / "m", n=3)
    assert class_names(cfg) == ["class0", "class1", "class2"]
    assert len(build_dataset(cfg, "train", 32, 0)) == 3
    csv_manifest(tmp_path / "bad", [("train", "f", "a.wav")], header=("split", "video_or_frames", "audio"))
    cfg.root = str(tmp_path / "bad")
    with pytest.raises(DataError, match=r"bad/manifest.csv: missing column\(s\) label"):
        build_dataset(cfg, "train", 32, 0)
    csv_manifest(tmp_path / "bad2", [("train", "f", "a.wav", "")])
    cfg.root = str(tmp_path / "bad2" / "manifest.csv")
    with pytest.raises(DataError, match=r"manifest.csv:2: empty column\(s\) label"):
        build_dataset(cfg, "train", 32, 0)
