"""The CPU loader: determinism (seed, epoch, index), exact resume, rank sharding, background pairs."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from test_data_media import one_thread, tiny_vggsound  # noqa: F401 (fixture)

from maavt_fast.config import BG_LABEL
from maavt_fast.data import build_dataset, build_loader
from maavt_fast.data.audio import clip_spectrograms
from maavt_fast.data.image import CropFlip, open_image, transform
from maavt_fast.data.plan import list_frames

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    return tiny_vggsound(tmp_path_factory.mktemp("v"), classes=3, clips=8)  # 18 train clips (val_fraction 0.15 -> 15)


def batches(cfg, split="train", **kw):
    kw = {"batch_size": 4, "seed": 3, **kw}
    return list(build_loader(cfg, split, 32, **kw))


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for f in dataclasses.fields(x):
            assert torch.equal(getattr(x, f.name), getattr(y, f.name)), f.name


def test_batches_do_not_depend_on_worker_count(vgg):
    assert_same(batches(vgg, epoch=1, num_workers=0), batches(vgg, epoch=1, num_workers=2))


def test_batch_shapes_and_len(vgg):
    loader = build_loader(vgg, "train", 32, 4, seed=3)
    got = list(loader)
    assert len(got) == len(loader) == len(loader.dataset) // 4
    b = got[0]
    assert b.audio.shape == (4, 1, 32, 32) and b.image.shape == (4, 1, 3, 32, 32) and b.label.shape == (4, 1)
    assert b.audio.dtype == b.image.dtype == torch.float32 and b.label.dtype == torch.int64 and b.valid.all()
    assert b.to("cpu").label is not None and len(b) == 4
    test = build_loader(vgg, "test", 32, 4, seed=3)
    assert len(test) == len(list(test)) == 2  # 6 test clips, the last batch kept (drop_last False)


def test_epochs_differ_and_repeat(vgg):
    e0, e1 = batches(vgg, epoch=0), batches(vgg, epoch=1)
    assert_same(e0, batches(vgg, epoch=0))
    assert not torch.equal(torch.cat([b.index for b in e0]), torch.cat([b.index for b in e1]))
    # the same clip gets a different crop/offset in another epoch
    first = {int(i): b.audio[k] for b in e0 for k, i in enumerate(b.index)}
    second = {int(i): b.audio[k] for b in e1 for k, i in enumerate(b.index)}
    common = sorted(set(first) & set(second))
    assert any(not torch.equal(first[i], second[i]) for i in common)


def test_start_batch_resumes_exactly(vgg):
    full = batches(vgg, epoch=2)
    assert_same(batches(vgg, epoch=2, start_batch=2), full[2:])
    loader = build_loader(vgg, "train", 32, 4, seed=3, epoch=2, start_batch=1)
    assert_same(list(loader), full[1:])
    assert_same(list(loader), full[1:])  # re-iterable: the same batches again


@pytest.mark.parametrize("split", ["train", "test"])
def test_ranks_get_disjoint_slices_of_one_permutation(vgg, split):
    world = 2
    per_rank = [batches(vgg, split, rank=r, world_size=world, epoch=1, batch_size=2) for r in range(world)]
    idx = [torch.cat([b.index[b.valid] for b in bs]).tolist() for bs in per_rank]
    assert not set(idx[0]) & set(idx[1])
    n = len(build_dataset(vgg, split, 32, 3))
    assert len(per_rank[0]) == len(per_rank[1])
    if split == "train":  # drop_last: the remainder of n / world is dropped
        assert len(idx[0]) + len(idx[1]) == (n // world // 2) * 2 * world
    else:  # every test clip exactly once; padding flagged invalid
        assert sorted(idx[0] + idx[1]) == list(range(n))


def _test_image(cfg, clip):
    """The eval-transform image of `clip`'s frame that a 1-s window at 0 s shows (frame 0)."""
    return transform(open_image(list_frames(clip.visual)[0]), CropFlip.full(40, 40), 32, cfg.image_mean,
                     cfg.image_std)


@pytest.mark.parametrize("parity_bug", [False, True])
def test_background_pairs_swap_the_image_for_another_class(vgg, parity_bug):
    """Audio stays the clip's own; the image comes from a clip of another class (docs/model.md#background-pairs)."""
    cfg = dataclasses.replace(vgg, bg_prob=0.5, train_augment=False, bg_relabel_only=parity_bug,
                              audio=dataclasses.replace(vgg.audio, train_random_crop=False, test_offset_seconds=0.0))
    ds = build_dataset(cfg, "train", 32, 3)
    n_bg = 0
    for i in range(len(ds)):
        item = ds[(4, i)]
        own = ds.clips[i]
        torch.testing.assert_close(item["audio"], clip_spectrograms(own.audio, cfg.audio, 32, 1, 0), rtol=0, atol=0)
        if item["label"].tolist() != [BG_LABEL]:
            assert item["label"].tolist() == [own.labels[0]]
            torch.testing.assert_close(item["image"][0], _test_image(cfg, own), rtol=0, atol=0)
            continue
        n_bg += 1
        same = [c for c in ds.clips if torch.equal(_test_image(cfg, c), item["image"][0])]
        assert len(same) == 1
        if parity_bug:  # the release: a matched pair, only relabelled
            assert same[0] == own
        else:
            assert same[0].labels[0] != own.labels[0]
    assert 0 < n_bg < len(ds)


@pytest.mark.parametrize("decode", ["cpu", "dali"])
def test_empty_split_gives_an_empty_loader(vgg, decode):
    cfg = dataclasses.replace(vgg, val_fraction=0.0, decode=decode)
    loader = build_loader(cfg, "val", 32, 4, seed=3)
    assert len(loader) == 0 and list(loader) == []
