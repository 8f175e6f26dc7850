"""The fast path (`MAAVT`) against the release-order oracle (`ReferenceMAAVT`) from the same weights, fp32.

Tolerances (fp32): logits, loss terms and attention maps abs 1e-5; gradients of every trainable
parameter: relative error ||g_fast - g_ref|| / ||g_ref|| <= 1e-4 per parameter tensor (norm-wise; in
fp64 the two orders agree to ~1e-13, so what remains in fp32 is rounding).
"""
from __future__ import annotations

import pytest
import torch

from conftest import random_batch, tiny_config
from maavt_fast.model import MAAVT
from maavt_fast.model.reference import ReferenceMAAVT

VALUE_ATOL = 1e-5
GRAD_REL = 1e-4

OPTIONS = {
    "default": {},
    "layerwise_common": {"model__layerwise_token": "common"},
    "contrastive_final": {"model__contrastive": "final"},
    "contrastive_cmn": {"model__contrastive": "blockwise_cmn"},
    "contrastive_off": {"model__contrastive": "none"},
    "no_release_quirks": {"model__release_quirks": "false"},
    "no_bg_token": {"model__bg_token": "false"},
    "no_lsa": {"model__lsa": "false"},
    "no_unimodal": {"model__unimodal_tokens": "false"},
    "no_shared": {"model__shared_tokens": "false", "model__contrastive": "none"},
    "no_tokens": {"model__shared_tokens": "false", "model__unimodal_tokens": "false", "model__contrastive": "none"},
    "unequal_streams": {"model__n_audio_tokens": "2", "model__n_visual_tokens": "4"},
}


def _pair(cfg):
    fast = MAAVT(cfg.model)
    ref = ReferenceMAAVT(cfg.model)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def _compare(fast, ref, batch):
    audio, image, label = batch
    out_f = fast(audio, image, label, return_attn=True)
    out_r = ref(audio, image, label, return_attn=True)
    for name in ("fg_logits", "bg_logits", "attn", "loss", "loss_fg", "loss_bg", "loss_contrastive"):
        a, b = getattr(out_f, name), getattr(out_r, name)
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, atol=VALUE_ATOL, rtol=0, msg=lambda m: f"{name}: {m}")
    for a, b in zip(out_f.modality_logits, out_r.modality_logits):
        torch.testing.assert_close(a, b, atol=VALUE_ATOL, rtol=0)
    out_f.loss.backward()
    out_r.loss.backward()
    grads_r = dict(ref.named_trainable_parameters())
    names = []
    for name, p in fast.named_trainable_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        g_ref = grads_r[name].grad
        g_ref = torch.zeros_like(p) if g_ref is None else g_ref  # a term with no kept rows: no graph in the oracle
        rel = ((p.grad - g_ref).norm() / g_ref.norm().clamp_min(1e-12)).item()
        assert rel <= GRAD_REL, f"grad of {name}: relative error {rel:.2e} > {GRAD_REL}"
        names.append(name)
    return names


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_fast_path_matches_reference(option, backend):
    cfg = tiny_config(model__attention=backend, **OPTIONS[option])
    fast, ref = _pair(cfg)
    _compare(fast, ref, random_batch(5, 1, cfg.model.img_size, cfg.model.num_classes))


@pytest.mark.parametrize("batch,frames", [(1, 1), (1, 10), (5, 1), (5, 10)])
def test_batch_and_frame_counts(batch, frames):
    cfg = tiny_config()
    fast, ref = _pair(cfg)
    names = _compare(fast, ref, random_batch(batch, frames, cfg.model.img_size, cfg.model.num_classes))
    assert "vit.cls_token" in names and "tokens.shared" in names


def test_all_background_batch_has_finite_losses_and_gradients():
    cfg = tiny_config()
    fast, ref = _pair(cfg)
    audio, image, _ = random_batch(4, 1, cfg.model.img_size, cfg.model.num_classes)
    label = torch.full((4, 1), -1)
    out = fast(audio, image, label)
    assert out.loss_fg.item() == 0 and out.loss_contrastive.item() == 0
    _compare(fast, ref, (audio, image, label))
    assert all(torch.isfinite(p.grad).all() for _, p in fast.named_trainable_parameters())


def test_inference_without_labels_returns_no_losses():
    cfg = tiny_config()
    model = MAAVT(cfg.model).eval()
    audio, image, _ = random_batch(2, 1, cfg.model.img_size, cfg.model.num_classes)
    with torch.no_grad():
        out = model(audio, image)
    assert out.loss is None and out.attn is None and out.fg_logits.shape == (2, cfg.model.num_classes)


def test_attention_map_is_a_distribution_over_patches():
    cfg = tiny_config()
    model = MAAVT(cfg.model)
    audio, image, label = random_batch(3, 2, cfg.model.img_size, cfg.model.num_classes)
    attn = model(audio, image, label, return_attn=True).attn
    side = cfg.model.img_size // 16
    assert attn.shape == (6, side, side)
    torch.testing.assert_close(attn.sum(dim=(1, 2)), torch.ones(6))
