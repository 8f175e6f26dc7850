"""`MAAVTLoss`: the losses from the model's outputs; the model itself holds no distributed state."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from conftest import random_batch, tiny_config
from maavt_fast.model import MAAVT
from maavt_fast.model.loss import MAAVTLoss
from maavt_fast.ops import blockwise_contrastive_loss_reference


@pytest.mark.parametrize("contrastive,blocks", [("blockwise_sep", 2), ("blockwise_cmn", 2), ("final", 1),
                                                ("none", 0)])
def test_output_carries_the_projected_contrastive_features(contrastive, blocks):
    cfg = tiny_config(model__contrastive=contrastive)
    audio, image, _ = random_batch(3, 2, cfg.model.img_size, cfg.model.num_classes)
    with torch.no_grad():
        out = MAAVT(cfg.model)(audio, image)
    if blocks == 0:
        assert out.contrastive_features is None
    else:
        assert [tuple(z.shape) for z in out.contrastive_features] == [(blocks, 6, cfg.model.proj_dim)] * 2


def test_losses_are_computed_from_the_output():
    cfg = tiny_config()
    model = MAAVT(cfg.model)
    audio, image, label = random_batch(4, 1, cfg.model.img_size, cfg.model.num_classes)
    out = MAAVTLoss(cfg.model)(model(audio, image), label)
    label = label.reshape(-1)
    keep = label >= 0
    torch.testing.assert_close(out.loss_fg, F.cross_entropy(out.fg_logits[keep], label[keep]))
    torch.testing.assert_close(out.loss_bg, F.binary_cross_entropy_with_logits(out.bg_logits, (~keep).float()))
    za, zv = out.contrastive_features
    torch.testing.assert_close(out.loss_contrastive,
                               blockwise_contrastive_loss_reference(za, zv, keep, cfg.model.temperature))
    torch.testing.assert_close(out.loss, out.loss_fg + out.loss_bg + out.loss_contrastive)
    with_label = model(audio, image, label)  # the convenience path: this batch alone, no process group
    torch.testing.assert_close(with_label.loss, out.loss)


def test_a_group_without_a_running_process_group_is_local():
    assert not dist.is_initialized()
    assert MAAVTLoss(tiny_config().model, group=dist.group.WORLD).group is None


def test_model_has_no_distributed_switch():
    model = MAAVT(tiny_config().model)
    assert not hasattr(model, "data_parallel")


def test_label_of_the_wrong_size_is_named():
    cfg = tiny_config()
    audio, image, _ = random_batch(2, 1, cfg.model.img_size, cfg.model.num_classes)
    with torch.no_grad():
        out = MAAVT(cfg.model)(audio, image)
    with pytest.raises(ValueError, match=r"label must hold one entry per row of fg_logits \(2\)"):
        MAAVTLoss(cfg.model)(out, torch.zeros(3, dtype=torch.long))
