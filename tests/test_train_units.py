"""Pure pieces of the trainer: schedule, metrics, OGM-GE, precision choice, checkpoint files, progress."""
from __future__ import annotations

import math
import os

import pytest
import torch

from maavt_fast.config import BG_LABEL, TrainConfig
from maavt_fast.train import checkpoint as ckpt
from maavt_fast.train.grad_mod import modality_scores, modulate_gradients, noise_seed, ogm_coefficients
from maavt_fast.train.logging_utils import Progress, RunLogger, format_duration
from maavt_fast.train.metrics import batch_counts, confusion_counts, per_class_accuracy, summarize
from maavt_fast.train.schedule import lr_at, set_lr, total_steps
from maavt_fast.train.step import choose_precision, cpu_has_native_bf16


# ----------------------------------------------------------------------------------------------- schedule

def test_schedule_warmup_then_cosine_reaches_zero():
    cfg = TrainConfig(lr=1.0, epochs=4, schedule="cosine", warmup_epochs=1)
    lrs = [lr_at(s, cfg, steps_per_epoch=10) for s in range(40)]
    assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay after warm-up
    assert lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 29 / 30)))
    assert lrs[25] == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 30)))


def test_schedule_step_and_constant_and_max_steps():
    step = TrainConfig(lr=1.0, epochs=40, schedule="step", step_epochs=15, step_gamma=0.1)
    assert [lr_at(s, step, 2) for s in (0, 29, 30, 59, 60)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    const = TrainConfig(lr=3e-4, epochs=50)
    assert {lr_at(s, const, 7) for s in range(350)} == {3e-4}  # the release's effective schedule
    assert total_steps(TrainConfig(epochs=3, max_steps=5), 10) == 5
    assert total_steps(TrainConfig(epochs=3), 10) == 30


def test_set_lr_fills_tensor_lr_in_place():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([p], lr=torch.tensor(1e-3))
    lr_tensor = opt.param_groups[0]["lr"]
    set_lr(opt, 0.5)
    assert opt.param_groups[0]["lr"] is lr_tensor and float(lr_tensor) == 0.5


# ----------------------------------------------------------------------------------------------- metrics

def test_batch_counts_match_hand_computed_metrics():
    # rows: 3 fg (labels 0, 1, 2) + 1 bg; fg predictions 0, 2, 2 -> 2/3 fg correct
    fg = torch.tensor([[5.0, 0, 0], [0, 0, 5.0], [0, 0, 5.0], [5.0, 0, 0]])
    bg = torch.tensor([-1.0, 2.0, -3.0, 4.0])  # predicted bg: rows 1 and 3; truth bg: row 3 -> bg acc 3/4
    label = torch.tensor([0, 1, 2, BG_LABEL])
    m = summarize(batch_counts(fg, bg, label))
    assert m["fg_acc"] == pytest.approx(2 / 3)
    assert m["bg_acc"] == pytest.approx(3 / 4)
    assert m["total_acc"] == pytest.approx((2 / 3 * 3 + 3 / 4 * 1) / 4)  # docs/model.md#metrics
    # bg-aware prediction: [0 ok, bg (wrong), 2 ok, bg ok] -> 3/4
    assert m["pred_acc"] == pytest.approx(3 / 4)
    assert (m["samples"], m["bg_samples"]) == (4, 1)


def test_total_acc_weights_batches_by_size_and_equals_fg_acc_without_bg():
    fg = torch.eye(3) * 4
    no_bg = batch_counts(fg, torch.full((3,), -5.0), torch.tensor([0, 1, 1]))
    m = summarize(no_bg + batch_counts(fg[:1], torch.full((1,), -5.0), torch.tensor([0])))
    assert m["total_acc"] == pytest.approx(m["fg_acc"]) == pytest.approx(3 / 4)
    empty = summarize(batch_counts(fg[:2], None, torch.tensor([BG_LABEL, BG_LABEL])))
    assert math.isnan(empty["fg_acc"])  # no foreground rows: NaN, not a crash
    assert empty["pred_acc"] == 0.0  # without a BG head every row is predicted foreground


def test_confusion_and_per_class():
    fg = torch.tensor([[3.0, 0], [3.0, 0], [0, 3.0], [0, 3.0]])
    cm = confusion_counts(fg, torch.tensor([0, 1, 1, BG_LABEL]), 2)
    assert cm.tolist() == [[1, 0], [1, 1]]
    assert per_class_accuracy(cm) == pytest.approx([1.0, 0.5])
    assert math.isnan(per_class_accuracy(torch.zeros(2, 2, dtype=torch.long))[0])


# ----------------------------------------------------------------------------------------------- OGM-GE

def test_ogm_coefficients_damp_the_dominant_modality():
    label = torch.tensor([0, 1, BG_LABEL])
    strong = torch.tensor([[9.0, 0], [0, 9.0], [0, 9.0]])
    weak = torch.zeros(3, 2)
    scores = modality_scores(weak, strong, label)  # audio weak, visual strong
    assert scores.tolist() == pytest.approx([1.0, 2 * torch.softmax(torch.tensor([9.0, 0]), 0)[0].item()])
    ca, cv = ogm_coefficients(weak, strong, label, alpha=0.1)
    ratio = scores[1] / scores[0]
    assert float(ca) == 1.0 and float(cv) == pytest.approx(1 - math.tanh(0.1 * float(ratio)))
    ca, cv = ogm_coefficients(strong, weak, label, alpha=0.1)
    assert float(cv) == 1.0 and float(ca) == pytest.approx(1 - math.tanh(0.1 * float(ratio)))
    ca, cv = ogm_coefficients(strong, weak, torch.full((3,), BG_LABEL), alpha=0.1)
    assert (float(ca), float(cv)) == (1.0, 1.0)  # no foreground row: no modulation


def test_modulate_gradients_scales_and_adds_noise_of_grad_std():
    torch.manual_seed(0)
    a, v, scalar = torch.nn.Parameter(torch.zeros(4000)), torch.nn.Parameter(torch.zeros(4000)), \
        torch.nn.Parameter(torch.zeros(1))
    a.grad, v.grad, scalar.grad = torch.randn(4000), torch.randn(4000) * 2, torch.ones(1)
    ga, gv = a.grad.clone(), v.grad.clone()
    modulate_gradients({"audio": [a, scalar], "visual": [v]}, torch.tensor(0.5), torch.tensor(1.0))
    assert (a.grad - 0.5 * ga).std().item() == pytest.approx(ga.std().item(), rel=0.05)
    assert (v.grad - gv).std().item() == pytest.approx(gv.std().item(), rel=0.05)  # noise even at coeff 1
    assert scalar.grad.item() == 1.0  # single-element parameters are left alone (as the release does)


def test_gradient_noise_depends_only_on_seed_and_step():
    def noisy(step, consume_global_rng=False):
        p = torch.nn.Parameter(torch.zeros(50))
        p.grad = torch.ones(50) + torch.arange(50.0)
        if consume_global_rng:
            torch.rand(7)  # e.g. a DataLoader drawing its base seed
        g = torch.Generator().manual_seed(noise_seed(1234, step))
        modulate_gradients({"audio": [p], "visual": []}, torch.tensor(1.0), torch.tensor(1.0), g)
        return p.grad

    assert torch.equal(noisy(5), noisy(5, consume_global_rng=True))
    assert not torch.equal(noisy(5), noisy(6))


# ----------------------------------------------------------------------------------------------- precision

def test_precision_choice(tmp_path):
    cpu = torch.device("cpu")
    assert choose_precision("fp32", cpu).dtype is None
    assert choose_precision("bf16", cpu).dtype == torch.bfloat16
    auto = choose_precision("auto", cpu)
    assert (auto.dtype == torch.bfloat16) == cpu_has_native_bf16() and auto.reason
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu avx2 avx512f\n")
    assert not cpu_has_native_bf16(info)
    info.write_text("processor : 0\nflags : fpu avx512f avx512_bf16\n")
    assert cpu_has_native_bf16(info)
    assert not cpu_has_native_bf16(tmp_path / "missing")


# ----------------------------------------------------------------------------------------------- checkpoint files

def test_atomic_save_leaves_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    ckpt.atomic_save({"v": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_save({"v": 2}, path)
    monkeypatch.undo()
    assert torch.load(path)["v"] == 1
    assert os.listdir(tmp_path) == ["latest.pt"]  # no temp file left behind


def test_read_checkpoint_errors_name_the_problem(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.read_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a pickle")
    with pytest.raises(ckpt.CheckpointError, match="could not be read"):
        ckpt.read_checkpoint(tmp_path / "garbage.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ckpt.CheckpointError, match="neither a maavt_fast checkpoint nor an official"):
        ckpt.read_checkpoint(tmp_path / "other.pt")
    torch.save({"format": ckpt.FORMAT, "format_version": 99}, tmp_path / "future.pt")
    with pytest.raises(ckpt.CheckpointError, match="format_version 99"):
        ckpt.read_checkpoint(tmp_path / "future.pt")
    torch.save({"state_dict": {}, "epoch": 3}, tmp_path / "official.pth.tar")
    official = ckpt.read_checkpoint(tmp_path / "official.pth.tar")
    assert ckpt.is_official(official)
    with pytest.raises(ckpt.CheckpointError, match="official checkpoint and carries no maavt_fast config"):
        ckpt.checkpoint_config(official, "official.pth.tar")
    with pytest.raises(ckpt.CheckpointError, match="cannot be resumed"):
        ckpt.restore_training(official, None, None, "official.pth.tar", None)


def test_resume_reads_a_checkpoint_with_older_key_names(tmp_path):
    """Log records with `loss_cnt` (now `loss_contrastive`), weights `tokens.<group>_attn.*` (now `tokens.lsa.<group>.*`)."""
    from conftest import tiny_config
    from maavt_fast.model import MAAVT
    from maavt_fast.train.step import build_optimizer

    cfg = tiny_config()
    model = MAAVT(cfg.model)
    optimizer = build_optimizer(model, 1e-3, 0.0, torch.device("cpu"))
    loop = ckpt.LoopState(step=2, history=[{"event": "train", "step": 2, "loss": 1.5, "loss_cnt": 0.5}])
    path = ckpt.save_checkpoint(tmp_path / "old.pt", model=model, cfg=cfg, optimizer=optimizer, loop=loop)
    saved = ckpt.read_checkpoint(path)
    saved["model"] = {k.replace("tokens.lsa.audio.", "tokens.audio_attn."): v for k, v in saved["model"].items()}
    assert "tokens.audio_attn.qkv.weight" in saved["model"]
    fresh = MAAVT(cfg.model)
    restored = ckpt.restore_training(saved, fresh, build_optimizer(fresh, 1e-3, 0.0, torch.device("cpu")), path, cfg)
    assert restored.history == [{"event": "train", "step": 2, "loss": 1.5, "loss_contrastive": 0.5}]
    assert torch.equal(fresh.tokens.lsa["audio"].qkv.weight, model.tokens.lsa["audio"].qkv.weight)


class _RunsCodeWhenUnpickled:
    """A pickle payload that would create `marker` if a full unpickle ran it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_files_are_read_data_only_and_code_in_them_never_runs(tmp_path):
    from maavt_fast.model import WeightsError
    from maavt_fast.model.backbone import read_state_dict

    marker = tmp_path / "code_ran"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 3, "args": _RunsCodeWhenUnpickled(marker)},
               tmp_path / "evil.pth.tar")
    with pytest.raises(ckpt.CheckpointError, match=r"evil.pth.tar.*refuses \((io|builtins)\.open\).*never unpickles"):
        ckpt.read_checkpoint(tmp_path / "evil.pth.tar")
    with pytest.raises(WeightsError, match=r"evil.pth.tar.*\((io|builtins)\.open\)"):
        read_state_dict(tmp_path / "evil.pth.tar")
    assert not marker.exists()


def test_rng_capture_restore_roundtrip():
    state = ckpt.capture_rng()
    a = torch.rand(3)
    ckpt.restore_rng(state)
    assert torch.equal(torch.rand(3), a)


# ----------------------------------------------------------------------------------------------- logging

def test_run_logger_writes_json_lines_and_progress_line(tmp_path):
    import json

    logger = RunLogger(tmp_path)
    logger.log("train", 3, loss=float("nan"), acc=0.5)
    logger.close()
    rec = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0].replace("NaN", "null"))
    assert rec["event"] == "train" and rec["step"] == 3 and rec["acc"] == 0.5
    RunLogger(tmp_path / "other", enabled=False).log("train", 1, loss=1.0)
    assert not (tmp_path / "other").exists()  # non-main ranks write nothing
    progress = Progress(total_steps=100, global_batch=8)
    stats = progress.update(10)
    line = progress.line(10, 0, 1.2345, 0.5, 1e-3, stats)
    assert "step  10/100" in line and "samples/s" in line and "ETA" in line
    assert format_duration(3725) == "1:02:05" and format_duration(65) == "1:05"


def test_process_group_joins_nothing_in_a_single_process(monkeypatch):
    from maavt_fast.train.distributed import process_group

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with process_group("cpu") as info:
        assert (info.world_size, info.rank, info.device.type) == (1, 0, "cpu")
        assert not torch.distributed.is_initialized()


def test_process_group_leaves_a_group_the_caller_made(tmp_path, monkeypatch):
    import torch.distributed as dist

    from maavt_fast.train.distributed import process_group

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")  # as under a launcher whose caller already joined
        with process_group("cpu") as info:
            assert info.world_size == 2
        assert dist.is_initialized()
        with pytest.raises(RuntimeError, match="boom"), process_group("cpu"):
            raise RuntimeError("boom")
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
