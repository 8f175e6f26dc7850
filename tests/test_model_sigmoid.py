"""`model.contrastive_loss="sigmoid"`: learnable per-block scale and bias, the loss, training and checkpoints."""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import random_batch, tiny_config
from maavt_fast import cli
from maavt_fast.config import Config, ConfigError
from maavt_fast.data import synthesize
from maavt_fast.model import MAAVT
from maavt_fast.model.backbone import WeightsError
from maavt_fast.model.loss import MAAVTLoss
from maavt_fast.model.reference import ReferenceMAAVT
from maavt_fast.ops import blockwise_sigmoid_loss_reference
from maavt_fast.train.checkpoint import load_weights, read_checkpoint, save_checkpoint

SIGMOID_PARAMS = ("contrastive_log_scale", "contrastive_bias")


def test_unknown_contrastive_loss_names_the_choices():
    with pytest.raises(ConfigError, match=r"model.contrastive_loss='softmax' is not one of infonce, sigmoid"):
        tiny_config(model__contrastive_loss="softmax").model.validate()


def test_infonce_is_the_default_and_adds_no_parameter():
    model = MAAVT(tiny_config().model)
    assert model.cfg.contrastive_loss == "infonce" and model.contrastive_log_scale is None
    assert not set(SIGMOID_PARAMS) & {k for k, _ in model.named_trainable_parameters()}


@pytest.mark.parametrize("contrastive,blocks", [("blockwise_sep", 2), ("blockwise_cmn", 2), ("final", 1),
                                                ("none", 0)])
def test_scale_and_bias_are_trainable_per_block_and_initialised_as_siglip(contrastive, blocks):
    model = MAAVT(tiny_config(model__contrastive=contrastive, model__contrastive_loss="sigmoid").model)
    trainable = dict(model.named_trainable_parameters())
    if blocks == 0:
        assert model.contrastive_log_scale is None and not set(SIGMOID_PARAMS) & set(trainable)
        return
    torch.testing.assert_close(trainable["contrastive_log_scale"], torch.full((blocks,), math.log(10.0)))
    torch.testing.assert_close(trainable["contrastive_bias"], torch.full((blocks,), -10.0))
    assert set(SIGMOID_PARAMS) <= set(model.trainable_state_dict())


def test_forward_backward_reaches_scale_and_bias():
    cfg = tiny_config(model__contrastive_loss="sigmoid")
    model = MAAVT(cfg.model)
    audio, image, label = random_batch(4, 2, cfg.model.img_size, cfg.model.num_classes)
    out = model(audio, image, label)
    assert torch.isfinite(out.loss) and torch.isfinite(out.loss_contrastive) and out.loss_contrastive > 0
    out.loss.backward()
    for name in SIGMOID_PARAMS:
        grad = getattr(model, name).grad
        assert grad is not None and grad.shape == (2,) and torch.isfinite(grad).all() and (grad != 0).all(), name
    assert model.tokens.shared.grad.abs().sum() > 0


def test_loss_equals_the_op_on_the_output_features():
    cfg = tiny_config(model__contrastive_loss="sigmoid")
    model = MAAVT(cfg.model)
    with torch.no_grad():
        model.contrastive_log_scale.copy_(torch.tensor([1.0, 2.5]))
        model.contrastive_bias.copy_(torch.tensor([-3.0, 0.5]))
    audio, image, label = random_batch(5, 1, cfg.model.img_size, cfg.model.num_classes)
    out = MAAVTLoss(cfg.model)(model(audio, image), label)
    za, zv = out.contrastive_features
    keep = label.reshape(-1) >= 0
    expected = blockwise_sigmoid_loss_reference(za, zv, keep, torch.tensor([1.0, 2.5]).exp(),
                                                torch.tensor([-3.0, 0.5]))
    torch.testing.assert_close(out.loss_contrastive, expected)
    torch.testing.assert_close(out.loss, out.loss_fg + out.loss_bg + out.loss_contrastive)


def test_sigmoid_loss_of_an_infonce_model_output_is_refused():
    cfg = tiny_config()
    audio, image, label = random_batch(2, 1, cfg.model.img_size, cfg.model.num_classes)
    with torch.no_grad():
        out = MAAVT(cfg.model)(audio, image)
    with pytest.raises(ValueError, match="model.contrastive_loss='sigmoid' needs the output's contrastive_scale_bias"):
        MAAVTLoss(tiny_config(model__contrastive_loss="sigmoid").model)(out, label)


def test_release_order_reference_refuses_sigmoid():
    with pytest.raises(ValueError, match="InfoNCE loss only; got model.contrastive_loss='sigmoid'"):
        ReferenceMAAVT(tiny_config(model__contrastive_loss="sigmoid").model)


def test_checkpoint_round_trip_keeps_scale_and_bias(tmp_path):
    cfg = tiny_config(model__contrastive_loss="sigmoid")
    source = MAAVT(cfg.model)
    with torch.no_grad():
        source.contrastive_log_scale.add_(0.25)
        source.contrastive_bias.sub_(1.5)
    path = save_checkpoint(tmp_path / "c.pt", model=source, cfg=cfg)
    ckpt = read_checkpoint(path)
    assert set(SIGMOID_PARAMS) <= set(ckpt["model"])
    target = MAAVT(Config.from_dict(ckpt["config"]).model)
    assert target.cfg.contrastive_loss == "sigmoid"
    load_weights(ckpt, target, path)
    for name in SIGMOID_PARAMS:
        torch.testing.assert_close(getattr(target, name), getattr(source, name))
    with pytest.raises(WeightsError, match="unexpected keys contrastive_bias, contrastive_log_scale"):  # no place
        MAAVT(tiny_config().model).load_trainable_state_dict(source.trainable_state_dict())


def test_cli_trains_one_epoch_with_the_sigmoid_loss(capsys, tmp_path):
    root = synthesize(tmp_path / "syn", num_classes=5, clips_per_class=5, seed=0, image_size=32)
    code = cli.main(["train", "--preset", "tiny", "--data.root", str(root), "--data.num_workers", "0", "--no-test",
                     "--train.out_dir", str(tmp_path / "run"), "--train.precision", "fp32", "--train.epochs", "1",
                     "--model.contrastive_loss", "sigmoid"])
    assert code == 0, capsys.readouterr().err
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert ckpt["config"]["model"]["contrastive_loss"] == "sigmoid" and ckpt["loop"]["step"] >= 1
    assert not torch.equal(ckpt["model"]["contrastive_bias"], torch.full((2,), -10.0))  # the optimizer moved it
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["contrastive_loss"] == "sigmoid"


def test_an_official_checkpoint_loads_into_infonce_and_is_refused_by_sigmoid_naming_the_keys(tmp_path):
    from maavt_fast.model.official import load_official_checkpoint
    from test_model_api import _save_official

    source = MAAVT(tiny_config().model)
    _save_official(source, tmp_path / "model_best.pth.tar")
    load_official_checkpoint(tmp_path / "model_best.pth.tar", MAAVT(tiny_config().model))  # InfoNCE: unchanged
    with pytest.raises(WeightsError, match="missing keys contrastive_bias, contrastive_log_scale"):
        load_official_checkpoint(tmp_path / "model_best.pth.tar",
                                 MAAVT(tiny_config(model__contrastive_loss="sigmoid").model))
