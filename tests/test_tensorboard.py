"""TensorBoard logs of a run: written by a tiny CLI run and read back; the auto/true/false switch."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_config
from tensorboard.backend.event_processing import event_accumulator  # the `tensorboard` extra (CI installs it)

from maavt_fast import cli
from maavt_fast._extras import MissingExtraError
from maavt_fast.data import synthesize
from maavt_fast.train import tensorboard as tb



@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("syn"), num_classes=5, clips_per_class=6, seed=0, image_size=32)


def _events(run_dir):
    files = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    acc = event_accumulator.EventAccumulator(str(files[0]), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_a_run_writes_scalars_and_images_that_read_back(capsys, tmp_path, data_root):
    run = tmp_path / "run"
    code = cli.main(["train", "--preset", "tiny", "--data.root", str(data_root), "--data.num_workers", "0",
                     "--train.out_dir", str(run), "--train.epochs", "2", "--train.log_every", "2",
                     "--train.clip_grad_norm", "10", "--train.precision", "fp32", "--no-test"])
    out = capsys.readouterr().out
    assert code == 0
    first = next(line for line in out.splitlines() if line.startswith("training "))
    assert f"tensorboard: {run / 'tensorboard'}" in first
    assert "val @ step 10: 100% (" in out  # the validation's progress, a line per 10% off a terminal
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["event"] == "train"]
    val_steps = [r["step"] for r in records if r["event"] == "val"]
    assert len(val_steps) == 2 and train_steps

    acc = _events(run)
    scalars, images = set(acc.Tags()["scalars"]), set(acc.Tags()["images"])
    for tag in ("train/loss", "train/total_acc", "train/grad_norm", "lr", "throughput"):
        assert tag in scalars and [e.step for e in acc.Scalars(tag)] == train_steps, tag
    for tag in ("val/loss", "val/total_acc", "val/pred_acc"):
        assert tag in scalars and [e.step for e in acc.Scalars(tag)] == val_steps, tag
    last_val = next(r for r in reversed(records) if r["event"] == "val")
    assert acc.Scalars("val/total_acc")[-1].value == pytest.approx(last_val["total_acc"])
    assert {"val/curves", "val/confusion", "val/attention/0", "val/attention/3"} <= images
    assert not any(t.startswith("train/") for t in images)
    for tag in ("val/curves", "val/confusion", "val/attention/0"):
        shots = acc.Images(tag)
        assert [e.step for e in shots] == val_steps and shots[0].width > 100 and shots[0].height > 100, tag


def test_tensorboard_false_writes_nothing_and_says_so(capsys, tmp_path, data_root):
    run = tmp_path / "off"
    code = cli.main(["train", "--preset", "tiny", "--data.root", str(data_root), "--data.num_workers", "0",
                     "--train.out_dir", str(run), "--train.max_steps", "2", "--train.tensorboard", "false",
                     "--train.precision", "fp32", "--no-test"])
    assert code == 0
    assert "tensorboard off (train.tensorboard=false)" in capsys.readouterr().out
    assert not (run / "tensorboard").exists()


def test_the_switch_auto_true_false(monkeypatch, capsys, tmp_path, data_root):
    cfg = tiny_config(train__out_dir=str(tmp_path / "r"))
    cpu = torch.device("cpu")
    board = tb.open_board(cfg, cpu, is_main=True)
    assert isinstance(board, tb.Board) and board.status == f"tensorboard: {tmp_path / 'r' / 'tensorboard'}"
    board.close()
    assert type(tb.open_board(cfg, cpu, is_main=False)) is tb.NoBoard  # other ranks write nothing
    assert len(list((tmp_path / "r" / "tensorboard").iterdir())) == 1
    real_find_spec = tb.importlib.util.find_spec
    monkeypatch.setattr(tb.importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a))
    off = tb.open_board(cfg, cpu, is_main=True)
    assert type(off) is tb.NoBoard and "pip install 'maavt_fast[tensorboard]'" in off.status
    with pytest.raises(MissingExtraError, match=r"pip install 'maavt_fast\[tensorboard\]'") as err:
        tb.open_board(tiny_config(train__tensorboard="true"), cpu, is_main=True)
    assert "\n" not in str(err.value)
    capsys.readouterr()
    code = cli.main(["train", "--preset", "tiny", "--data.root", str(data_root), "--data.num_workers", "0",
                     "--train.tensorboard", "true", "--train.out_dir", str(tmp_path / "t"), "--no-test"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install 'maavt_fast[tensorboard]'" in err
    assert tiny_config(train__tensorboard="TRUE").train.tensorboard == "true"  # YAML's `true` arrives as "True"


def test_a_resumed_run_replaces_the_steps_it_logs_again(tmp_path):
    cfg = tiny_config(train__out_dir=str(tmp_path / "r"))
    cpu = torch.device("cpu")
    first = tb.open_board(cfg, cpu, is_main=True)
    for step in (1, 2, 3, 4):  # the run dies after step 4; its checkpoint is from step 2
        first.train(step, {"loss": float(step)}, 1e-3, 10.0)
    first.close()
    resumed = tb.open_board(cfg, cpu, is_main=True, start_step=2)
    for step in (3, 4, 5):
        resumed.train(step, {"loss": 10.0 * step}, 1e-3, 10.0)
    resumed.close()
    acc = event_accumulator.EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0),
                                                                       (5, 50.0)]
