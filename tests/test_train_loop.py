"""The training loop on the tiny model with in-memory batches: logging, checkpoints, exact resume, NaN stop."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from conftest import random_batch, tiny_config
from maavt_fast.train.checkpoint import CheckpointError, read_checkpoint
from maavt_fast.train.distributed import DistInfo
from maavt_fast.train.loop import NonFiniteLossError, Trainer
from maavt_fast.train.run import build_model

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@dataclass
class FakeBatch:
    audio: torch.Tensor
    image: torch.Tensor
    label: torch.Tensor
    valid: torch.Tensor  # (B,) bool: False for a loader's padding rows

    def __len__(self):
        return self.audio.shape[0]

    def to(self, device):
        return FakeBatch(self.audio.to(device), self.image.to(device), self.label.to(device), self.valid.to(device))


class FakeLoader:
    """`n` batches per epoch, each a function of (epoch, batch index) only, like the real loader.

    `crash_at`: raise at that (epoch, batch) (a crash mid-run); `nan_at`: that batch's audio is NaN;
    `skip_at`: that batch is wholly unreadable and skipped, as the real loader does with skip_bad.
    """

    def __init__(self, cfg, epoch, start_batch, n=5, crash_at=None, nan_at=None, skip_at=None, train=True):
        self.cfg, self.epoch, self.start, self.n = cfg, epoch, start_batch, n
        self.crash_at, self.nan_at, self.skip_at, self.train = crash_at, nan_at, skip_at, train
        self.position = start_batch

    def __len__(self):
        return self.n

    def __iter__(self):
        m = self.cfg.model
        for b in range(self.start, self.n):
            if (self.epoch, b) == self.crash_at:
                raise RuntimeError("simulated crash")
            self.position = b + 1
            if (self.epoch, b) == self.skip_at:
                continue
            audio, image, label = random_batch(self.cfg.train.batch_size, 1, m.img_size, m.num_classes,
                                               seed=1000 * self.epoch + b + (0 if self.train else 777),
                                               bg_every=3 if self.train else 0)
            if (self.epoch, b) == self.nan_at:
                audio = torch.full_like(audio, float("nan"))
            yield FakeBatch(audio, image, label, torch.ones(audio.shape[0], dtype=torch.bool))


def fake_loaders(cfg, **kw):
    def make(split, epoch=0, start_batch=0):
        if split == "train":
            return FakeLoader(cfg, epoch, start_batch, **kw)
        return FakeLoader(cfg, 0, 0, n=2, train=False)
    return make


def make_cfg(tmp_path, name, **overrides):
    base = dict(train__out_dir=str(tmp_path / name), train__precision="fp32", train__epochs="2",
                train__log_every="2", train__ckpt_every="3", train__lr="1e-3")
    return tiny_config(**{**base, **overrides})


def trainable(model):
    return {k: p.detach().clone() for k, p in model.named_trainable_parameters()}


def test_loop_trains_logs_validates_and_checkpoints(tmp_path):
    cfg = make_cfg(tmp_path, "run")
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    result = Trainer(cfg, CPU, model, fake_loaders(cfg)).fit()

    assert result.loop.step == 10 and result.loop.epoch == 2 and result.loop.batch_in_epoch == 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in frozen)  # the backbone stays frozen
    assert any(not torch.equal(before[k], p) for k, p in trainable(model).items())

    records = [json.loads(line) for line in (result.out_dir / "log.jsonl").read_text().splitlines()]
    events = [(r["event"], r["step"]) for r in records]
    assert events[0] == ("start", 0)
    assert [s for e, s in events if e == "train"] == [2, 3, 4, 5, 6, 8, 9, 10]  # log_every 2, ckpt_every 3, epoch ends
    assert [s for e, s in events if e == "val"] == [5, 10]
    assert ("checkpoint", 3) in events and ("end", 10) in events
    train_rec = next(r for r in records if r["event"] == "train")
    assert {"loss", "loss_fg", "loss_bg", "loss_contrastive", "fg_acc", "bg_acc", "total_acc", "pred_acc", "lr",
            "samples_per_s", "eta_s"} <= set(train_rec)
    val = [r for r in records if r["event"] == "val"]
    assert all(r["bg_samples"] == 0 and r["total_acc"] == r["fg_acc"] for r in val)

    latest, best = read_checkpoint(result.latest), read_checkpoint(result.best)
    assert latest["loop"]["step"] == 10 and latest["config"] == cfg.to_dict()
    assert best["loop"]["best_acc"] == max(r["total_acc"] for r in val)
    assert set(latest["model"]) == set(trainable(model))
    assert all(torch.equal(latest["model"][k], v) for k, v in trainable(model).items())
    assert (result.out_dir / "curves.png").stat().st_size > 0


@pytest.mark.parametrize("skip_at", [None, (1, 0)])
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, skip_at):
    # cosine + warm-up (lr depends on the step) and OGM-GE (gradient noise from the RNG) must both resume exactly;
    # so must a run whose loader skipped a wholly unreadable batch before the checkpoint (skip_at)
    extra = dict(train__schedule="cosine", train__warmup_epochs="0.5", train__grad_mod="true")
    ref_cfg = make_cfg(tmp_path, "ref", **extra)
    ref_model = build_model(ref_cfg)
    Trainer(ref_cfg, CPU, ref_model, fake_loaders(ref_cfg, skip_at=skip_at)).fit()

    cfg = make_cfg(tmp_path, "crash", **extra)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(cfg, CPU, build_model(cfg), fake_loaders(cfg, crash_at=(1, 3), skip_at=skip_at)).fit()
    latest = read_checkpoint(tmp_path / "crash" / "checkpoints" / "latest.pt")
    planned = 1 if skip_at is None else 2  # ckpt_every 3: step 6 is mid-epoch 2, one batch later with a skip
    assert latest["loop"]["step"] == 6 and latest["loop"]["batch_in_epoch"] == planned

    torch.manual_seed(999)  # the resumed process starts from a different RNG state: the checkpoint restores it
    model = build_model(cfg)
    trainer = Trainer(cfg, CPU, model, fake_loaders(cfg, skip_at=skip_at))
    trainer.resume_from(tmp_path / "crash" / "checkpoints" / "latest.pt")
    result = trainer.fit()
    assert result.loop.step == (10 if skip_at is None else 9)
    ref, got = trainable(ref_model), trainable(model)
    assert all(torch.equal(ref[k], got[k]) for k in ref), [k for k in ref if not torch.equal(ref[k], got[k])]


def test_resume_under_a_different_config_is_refused_by_key(tmp_path):
    cfg = make_cfg(tmp_path, "run")
    Trainer(cfg, CPU, build_model(cfg), fake_loaders(cfg)).fit()
    changed = make_cfg(tmp_path, "run", train__lr="0.5", train__epochs="9")  # epochs may change, lr may not
    trainer = Trainer(changed, CPU, build_model(changed), fake_loaders(changed))
    with pytest.raises(CheckpointError, match=r"config differs in train.lr \(") as e:
        trainer.resume_from(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert "train.epochs" not in str(e.value)


def test_nonfinite_loss_stops_with_the_offending_step(tmp_path):
    cfg = make_cfg(tmp_path, "nan", train__log_every="4", train__ckpt_every="100")
    with pytest.raises(NonFiniteLossError, match="at step 3") as err:
        Trainer(cfg, CPU, build_model(cfg), fake_loaders(cfg, nan_at=(0, 2))).fit()
    assert err.value.step == 3
    assert not (tmp_path / "nan" / "checkpoints" / "latest.pt").exists()  # nothing non-finite was saved
