"""Optimizer options: train.optimizer (adam | adamw), train.clip_grad_norm (inside the compiled step, norm
logged), train.patience (early stop on the val accuracy; `best` stays the best)."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import random_batch, tiny_config
from maavt_fast import cli
from maavt_fast.config import ConfigError
from maavt_fast.data import synthesize
from maavt_fast.train.checkpoint import read_checkpoint
from maavt_fast.train.optim import build_optimizer
from maavt_fast.train.run import build_model
from maavt_fast.train.step import TrainStep, choose_precision

CPU = torch.device("cpu")


class _OneParameter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.ones(3))

    def named_trainable_parameters(self):
        return self.named_parameters()


@pytest.mark.parametrize("kind,expected", [("adam", 1 - 0.1), ("adamw", 1 - 0.1 * 0.5)])
def test_adam_adds_l2_to_the_gradient_and_adamw_decays_the_weights(kind, expected):
    model = _OneParameter()
    optimizer = build_optimizer(model, lr=0.1, weight_decay=0.5, device=CPU, kind=kind)
    model.p.grad = torch.zeros(3)  # no loss gradient: only the decay moves the weights
    optimizer.step()
    # adam: the L2 term makes a nonzero gradient and Adam's first step moves by lr; adamw: p *= 1 - lr * wd
    torch.testing.assert_close(model.p.detach(), torch.full((3,), expected))


def _grad_norm(model, batch) -> float:
    model.zero_grad()
    model(*batch).loss.backward()
    grads = [p.grad for _, p in model.named_trainable_parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
    model.zero_grad()
    return norm


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_clipping_bounds_the_update_and_reports_the_norm_before_clipping(compile):
    torch._dynamo.reset()
    cfg = tiny_config()
    model = build_model(cfg)
    batch = random_batch(4, 1, cfg.model.img_size, cfg.model.num_classes)
    expected_norm = _grad_norm(model, batch)
    params = [p for _, p in model.named_trainable_parameters()]
    before = [p.detach().clone() for p in params]
    sgd = torch.optim.SGD(params, lr=1.0)  # the update is the (clipped) gradient itself
    step = TrainStep(model, model, sgd, choose_precision("fp32", CPU), CPU, compile=compile, clip_grad_norm=0.01)
    result = step(*batch, step=0)
    assert expected_norm > 0.1
    torch.testing.assert_close(result["grad_norm"], torch.tensor(expected_norm), rtol=1e-4, atol=0)
    update = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, params)])
    torch.testing.assert_close(torch.linalg.vector_norm(update), torch.tensor(0.01), rtol=1e-3, atol=0)


def test_without_clipping_no_norm_is_computed():
    cfg = tiny_config()
    model = build_model(cfg)
    step = TrainStep(model, model, build_optimizer(model, 1e-3, 0.0, CPU), choose_precision("fp32", CPU), CPU,
                     compile=False)
    assert "grad_norm" not in step(*random_batch(4, 1, 32, 5), step=0)


@pytest.mark.parametrize("key,value,message", [
    ("train.optimizer", "sgd", "train.optimizer='sgd' is not one of adam, adamw"),
    ("train.clip_grad_norm", "0", "train.clip_grad_norm must be > 0 or None"),
    ("train.patience", "0", "train.patience must be >= 1 or None"),
])
def test_bad_option_values_are_named(key, value, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**{key.replace(".", "__"): value})


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("syn"), num_classes=5, clips_per_class=6, seed=0, image_size=32)


def _train(tmp_path, data_root, capsys, *options):
    argv = ["train", "--preset", "tiny", "--data.root", str(data_root), "--data.num_workers", "0",
            "--train.precision", "fp32", "--train.out_dir", str(tmp_path / "run"), "--no-test", *options]
    code = cli.main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    return out.out, records


def test_adamw_with_clipping_from_the_command_line(tmp_path, data_root, capsys):
    out, records = _train(tmp_path, data_root, capsys, "--train.optimizer", "adamw", "--train.weight_decay", "0.05",
                          "--train.clip_grad_norm", "0.5", "--train.log_every", "2", "--train.max_steps", "4")
    train = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train] == [2, 4] and all(r["grad_norm"] > 0 for r in train)
    assert out.count("grad norm ") == 2
    latest = read_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert latest["config"]["train"]["optimizer"] == "adamw"
    assert latest["optimizer"]["param_groups"][0]["decoupled_weight_decay"] is True


def test_patience_stops_after_validations_without_improvement(tmp_path, data_root, capsys):
    # lr 1e-12 leaves the weights (and so the val accuracy) as they are: only the first validation improves
    out, records = _train(tmp_path, data_root, capsys, "--train.lr", "1e-12", "--train.epochs", "6",
                          "--train.patience", "2", "--train.log_every", "100")
    vals = [r for r in records if r["event"] == "val"]
    steps_per_epoch = next(r for r in records if r["event"] == "start")["steps_per_epoch"]
    assert [r["step"] for r in vals] == [steps_per_epoch * k for k in (1, 2, 3)]  # stopped after epoch 3 of 6
    assert len({r["total_acc"] for r in vals}) == 1
    assert [r["step"] for r in records if r["event"] == "early_stop"] == [3 * steps_per_epoch]
    assert "early stop: no higher val accuracy in 2 validations (train.patience=2)" in out
    best = read_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    latest = read_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert best["loop"]["step"] == steps_per_epoch and latest["loop"]["step"] == 3 * steps_per_epoch
    assert latest["loop"]["validations_since_best"] == 2
