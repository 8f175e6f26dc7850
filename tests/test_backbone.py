"""The frozen ViT: equality with timm, the audio patch embedding, weights files and their errors."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_config
from maavt_fast.model import MAAVT, WeightsError
from maavt_fast.model.backbone import build_vit, embed_patches, position_embedding
from maavt_fast.model.blocks import attention, resolve_backend, run_block


def test_block_runner_equals_timm_forward_features():
    cfg = tiny_config(model__bg_token="false")
    vit = build_vit(cfg.model).eval()
    images = torch.randn(3, 3, 32, 32)
    x = torch.cat([vit.cls_token.expand(3, -1, -1), embed_patches(vit, images)], dim=1) + vit.pos_embed
    flat, layout = x.reshape(-1, x.shape[-1]), ((3, x.shape[1]),)
    for blk in vit.blocks:
        flat, _ = run_block(blk, flat, layout, "sdpa")
    ours = vit.norm(flat).view_as(x)
    torch.testing.assert_close(ours, vit.forward_features(images), atol=1e-5, rtol=0)


def test_single_channel_spectrogram_embedding_equals_three_channel_copy():
    vit = build_vit(tiny_config().model)
    spec = torch.randn(2, 32, 32)
    three = vit.patch_embed(spec.unsqueeze(1).repeat(1, 3, 1, 1))
    torch.testing.assert_close(embed_patches(vit, spec), three, atol=1e-5, rtol=0)


def test_parity_position_embedding_is_the_release_1d_resampling():
    vit = build_vit(tiny_config().model)
    pos = vit.pos_embed  # (1, 1 + P, D) with P = 4 here
    n = pos.shape[1] + 1
    src = (torch.arange(n) + 0.5) * pos.shape[1] / n - 0.5  # align_corners=False source coordinates
    lo = src.floor().clamp(0, pos.shape[1] - 1).long()
    hi = (lo + 1).clamp(max=pos.shape[1] - 1)
    w = (src - lo).clamp(0, 1)[None, :, None]
    expected = pos[:, lo] * (1 - w) + pos[:, hi] * w
    torch.testing.assert_close(position_embedding(vit, with_bg=True, release_quirks=True), expected)
    fixed = position_embedding(vit, with_bg=True, release_quirks=False)
    torch.testing.assert_close(fixed[:, :-1], pos)
    assert fixed[:, -1].abs().sum() == 0


def test_backbone_is_frozen_except_parity_cls_token():
    for parity, expected in (("true", {"vit.cls_token"}), ("false", set())):
        model = MAAVT(tiny_config(model__release_quirks=parity).model)
        assert {k for k, _ in model.named_trainable_parameters() if k.startswith("vit.")} == expected


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_local_weights_file_loads(tmp_path, suffix):
    cfg = tiny_config()
    source = build_vit(cfg.model)
    sd = {k: v.clone() for k, v in source.state_dict().items()}
    sd["head.weight"], sd["head.bias"] = torch.randn(10, 192), torch.randn(10)  # an unused classifier head is fine
    path = tmp_path / f"vit{suffix}"
    if suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save({"state_dict": sd} if suffix == ".pth" else sd, path)
    cfg.model.weights = str(path)
    vit = build_vit(cfg.model)
    for k, v in source.state_dict().items():
        torch.testing.assert_close(vit.state_dict()[k], v)
    assert not any(p.requires_grad for p in vit.parameters())


def test_weights_that_do_not_fit_name_the_keys(tmp_path):
    cfg = tiny_config()
    sd = build_vit(cfg.model).state_dict()
    sd.pop("blocks.1.mlp.fc2.bias")
    sd["blocks.0.norm1.weight"] = torch.ones(7)
    sd["adapter.weight"] = torch.ones(3)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    cfg.model.weights = str(path)
    with pytest.raises(WeightsError) as e:
        build_vit(cfg.model)
    msg = str(e.value)
    assert "blocks.1.mlp.fc2.bias" in msg and "adapter.weight" in msg and "blocks.0.norm1.weight" in msg


def test_missing_and_corrupt_weights_files(tmp_path):
    cfg = tiny_config(model__weights=str(tmp_path / "nope.safetensors"))
    with pytest.raises(WeightsError, match="does not exist"):
        build_vit(cfg.model)
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"not a checkpoint")
    cfg.model.weights = str(bad)
    with pytest.raises(WeightsError, match="cannot read"):
        build_vit(cfg.model)


def _fake_memory_efficient_attention(q, k, v, attn_bias=None):
    """xformers' (B, M, H, K) layout computed with SDPA and the materialised block-diagonal mask."""
    mask = None if attn_bias is None else attn_bias.materialize((q.shape[1], k.shape[1]))
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                           attn_mask=mask)
    return out.transpose(1, 2)


@pytest.mark.parametrize("layout", [((3, 7), (3, 7)), ((3, 7), (3, 9)), ((1, 5), (2, 4))])
def test_xformers_packing_equals_sdpa(monkeypatch, layout):
    import xformers.ops as xops  # a CI dependency: the test fails, never skips, without it
    monkeypatch.setattr(xops, "memory_efficient_attention", _fake_memory_efficient_attention)
    rows = sum(n * length for n, length in layout)
    qkv = torch.randn(rows, 3 * 24)
    torch.testing.assert_close(attention(qkv, layout, 3, "xformers"), attention(qkv, layout, 3, "sdpa"),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(attention(qkv, layout, 3, "math"), attention(qkv, layout, 3, "sdpa"),
                               atol=1e-5, rtol=0)


def test_xformers_backend_refuses_cpu_tensors():
    model = MAAVT(tiny_config(model__attention="xformers").model)
    with pytest.raises(RuntimeError, match="xformers.*CUDA"):
        model(torch.randn(1, 1, 32, 32), torch.randn(1, 1, 3, 32, 32))


def test_auto_backend_is_sdpa_except_math_on_cpu_under_bf16_autocast():
    x = torch.zeros(2, 3)
    assert resolve_backend("auto", x) == "sdpa"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert resolve_backend("auto", x) == "math"
        assert resolve_backend("sdpa", x) == "sdpa"
    with torch.autocast("cpu", dtype=torch.float16):
        assert resolve_backend("auto", x) == "sdpa"
