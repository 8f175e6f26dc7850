"""JAX `.npz` ViT weights through `model.weights`: the Google ViT/AugReg layout and the stacked big_vision one.

A random ViT is written in the layout timm's `_load_weights` reads (`to_jax_npz`, the inverse of its key names,
transposes and reshapes), loaded into a ViT built from another seed, and must match tensor for tensor and in
its forward pass. Files that are missing or do not fit (other width, other depth, a key removed) raise
`WeightsError` naming the file.
"""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from conftest import tiny_config
from maavt_fast.model import WeightsError
from maavt_fast.model.backbone import build_vit, load_vit_weights

# sub-module names inside an encoder block: (pre-attention norm, attention, pre-MLP norm, MLP)
_AUGREG_BLOCK = ("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
_BIG_VISION_BLOCK = ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")


def to_jax_npz(vit, path, big_vision: bool = False, drop: str | None = None) -> None:
    """Save `vit` as a JAX checkpoint: AugReg (`Transformer/encoderblock_{i}/...`) or big_vision (`params/` prefix,
    top-level `pos_embedding`, blocks stacked on a leading axis). Flax kernels are (in, out), the patch
    kernel is (h, w, C, D), attention kernels split the heads: q/k/v (D, H, hd), out (H, hd, D)."""
    def a(t):
        return t.detach().numpy().copy()

    heads, dim = vit.blocks[0].attn.num_heads, vit.embed_dim
    w = {"embedding/kernel": a(vit.patch_embed.proj.weight.permute(2, 3, 1, 0)),
         "embedding/bias": a(vit.patch_embed.proj.bias),
         "cls": a(vit.cls_token),
         "pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding": a(vit.pos_embed),
         "Transformer/encoder_norm/scale": a(vit.norm.weight),
         "Transformer/encoder_norm/bias": a(vit.norm.bias),
         "head/kernel": np.ones((dim, 10), np.float32),  # a classifier head the headless ViT ignores
         "head/bias": np.zeros(10, np.float32)}
    ln1, mha, ln2, mlp = _BIG_VISION_BLOCK if big_vision else _AUGREG_BLOCK
    blocks = []
    for blk in vit.blocks:
        b = {f"{ln1}/scale": a(blk.norm1.weight), f"{ln1}/bias": a(blk.norm1.bias),
             f"{ln2}/scale": a(blk.norm2.weight), f"{ln2}/bias": a(blk.norm2.bias),
             f"{mha}/out/kernel": a(blk.attn.proj.weight.reshape(dim, heads, -1).permute(1, 2, 0)),
             f"{mha}/out/bias": a(blk.attn.proj.bias)}
        for name, weight, bias in zip(("query", "key", "value"), blk.attn.qkv.weight.chunk(3),
                                      blk.attn.qkv.bias.chunk(3)):
            b[f"{mha}/{name}/kernel"] = a(weight.T.reshape(dim, heads, -1))
            b[f"{mha}/{name}/bias"] = a(bias.reshape(heads, -1))
        for r, fc in enumerate((blk.mlp.fc1, blk.mlp.fc2)):
            b[f"{mlp}/Dense_{r}/kernel"], b[f"{mlp}/Dense_{r}/bias"] = a(fc.weight.T), a(fc.bias)
        blocks.append(b)
    if big_vision:
        w |= {f"Transformer/encoderblock/{k}": np.stack([b[k] for b in blocks]) for k in blocks[0]}
    else:
        w |= {f"Transformer/encoderblock_{i}/{k}": v for i, b in enumerate(blocks) for k, v in b.items()}
    w = {("params/" if big_vision else "") + k: v for k, v in w.items() if k != drop}
    np.savez(path, **w)


def random_vit(seed: int, **timm_kwargs):
    """A headless ViT like `build_vit`'s with every parameter random (so no tensor matches another ViT's by chance)."""
    torch.manual_seed(seed)
    kwargs = dict(num_classes=0, img_size=32, depth=2) | timm_kwargs
    vit = timm.create_model(kwargs.pop("name", "vit_tiny_patch16_224"), **kwargs).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.copy_(torch.randn_like(p))
    return vit


@pytest.mark.parametrize("big_vision", [False, True], ids=["augreg", "big_vision"])
def test_npz_round_trip_through_model_weights(tmp_path, big_vision):
    source = random_vit(seed=0)
    path = tmp_path / "vit.npz"
    to_jax_npz(source, path, big_vision)
    cfg = tiny_config(model__weights=str(path))
    torch.manual_seed(1)
    vit = build_vit(cfg.model).eval()
    expected = source.state_dict()
    assert vit.state_dict().keys() == expected.keys()
    for k, v in vit.state_dict().items():
        torch.testing.assert_close(v, expected[k], atol=1e-6, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(vit(images), source(images), atol=1e-6, rtol=0)
    assert not any(p.requires_grad for p in vit.parameters())


def test_missing_or_corrupt_npz_names_the_file(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(WeightsError, match="nope.npz.*does not exist"):
        build_vit(tiny_config(model__weights=str(path)).model)
    path.write_bytes(b"not an npz archive")
    with pytest.raises(WeightsError, match="cannot load JAX weights .*nope.npz"):
        build_vit(tiny_config(model__weights=str(path)).model)


@pytest.mark.parametrize("case", ["wider", "deeper", "shallower", "key_removed", "big_vision_deeper"])
def test_npz_that_does_not_fit_names_the_file(tmp_path, case):
    if case == "wider":
        source = random_vit(0, name="vit_small_patch16_224")  # width 384 vs the tiny ViT's 192
    else:
        source = random_vit(0, depth={"deeper": 3, "big_vision_deeper": 3, "shallower": 1}.get(case, 2))
    path = tmp_path / f"{case}.npz"
    drop = "Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias" if case == "key_removed" else None
    to_jax_npz(source, path, big_vision=case.startswith("big_vision"), drop=drop)
    vit = random_vit(seed=1)
    with pytest.raises(WeightsError) as e:
        load_vit_weights(vit, path)
    msg = str(e.value)
    assert f"{case}.npz" in msg
    assert drop in msg if drop else "blocks of width" in msg  # what does not fit, not only that it failed
