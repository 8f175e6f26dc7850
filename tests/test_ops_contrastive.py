"""Fused blockwise contrastive loss vs its PyTorch reference: value and every gradient.

On CPU the Triton kernels run in the interpreter: TRITON_INTERPRET=1 must be set before import
(`make test` does). Without it the kernel tests fail (they are never skipped).
"""
from __future__ import annotations

import os
import subprocess
import sys

import itertools

import pytest
import torch

from maavt_fast.kernels import contrastive
from maavt_fast.kernels._launch import LAUNCHES, TileConfig, describe, pinned
from maavt_fast.ops import blockwise_contrastive_loss, blockwise_contrastive_loss_reference

# Tolerance per input dtype (atol = rtol) against the reference computed in fp64 on the same inputs. The
# kernels' dots take bf16/fp16 operands (the backward rounds the logit gradients to them, as flash-attention
# does), so their error is a few units of the dtype's rounding; fp32 ("ieee") is exact up to fp32 sums.
# Under the interpreter bf16 dots run on widened operands (exact products), so bf16 rounding is tested too.
TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
TF32_TOL = 2e-3  # fp32 inputs with fp32_precision="tf32": 10-bit mantissa products on a GPU


def _features(L, B, P, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(L, B, P, generator=g).to(device, dtype)
    visual = (0.5 * audio.float() + torch.randn(L, B, P, generator=g).to(device)).to(dtype)
    return audio, visual


def _keep(B, pattern, device):
    if pattern == "all":
        return torch.ones(B, dtype=torch.bool, device=device)
    if pattern == "one":
        return torch.arange(B, device=device) == B // 2
    if pattern == "none":
        return torch.zeros(B, dtype=torch.bool, device=device)
    return torch.rand(B, generator=torch.Generator().manual_seed(B)).to(device) > 0.3


def _loss_and_grads(fn, audio, visual, temperature, upstream, **kwargs):
    """Per-block losses (L,) and the gradients of <losses, upstream> w.r.t. audio, visual (and temperature)."""
    leaves = [audio.detach().clone().requires_grad_(), visual.detach().clone().requires_grad_()]
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.detach().clone().requires_grad_()
        leaves.append(temperature)
    loss = fn(leaves[0], leaves[1], temperature=temperature, reduction="none", **kwargs)
    return loss, torch.autograd.grad((loss * upstream).sum(), leaves)


def _compare(audio, visual, keep, temperature=0.07, normalize=True, dtype=torch.float32, tol=None, **kwargs):
    upstream = torch.linspace(0.5, 1.5, audio.shape[0], device=audio.device)
    before = LAUNCHES.copy()
    got, got_grads = _loss_and_grads(blockwise_contrastive_loss, audio, visual, temperature, upstream,
                                     keep=keep, normalize=normalize, impl="triton", **kwargs)
    assert LAUNCHES["contrastive_fwd"] == before["contrastive_fwd"] + 1
    assert LAUNCHES["contrastive_bwd"] == before["contrastive_bwd"] + 1
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.double()
    want, want_grads = _loss_and_grads(blockwise_contrastive_loss_reference, audio.double(), visual.double(),
                                       temperature, upstream.double(), keep=keep, normalize=normalize)
    tol = tol or TOL[dtype]
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)
    assert got_grads[0].dtype == got_grads[1].dtype == dtype
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g.double(), w, atol=tol, rtol=tol)
    return got, got_grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("L,B,P", [(1, 1, 20), (1, 3, 37), (3, 7, 50), (2, 33, 24), (2, 9, 300)])
def test_matches_reference(device, L, B, P, dtype):
    audio, visual = _features(L, B, P, dtype, device)
    _compare(audio, visual, _keep(B, "random", device), dtype=dtype)


def _config_pairs():
    """(dtype, forward config, backward config): every config of both autotune sets at least once."""
    for size, dtype in ((2, torch.float16), (4, torch.float32)):
        pairs = itertools.zip_longest(contrastive.FORWARD_CONFIGS[size], contrastive.BACKWARD_CONFIGS[size])
        for forward, backward in pairs:
            forward, backward = forward or contrastive.SMALL[size], backward or contrastive.SMALL[size]
            yield pytest.param(dtype, forward, backward, id=f"{dtype}-{describe(forward)}-{describe(backward)}")


@pytest.mark.parametrize("dtype,forward,backward", list(_config_pairs()))
def test_every_tile_config(device, dtype, forward, backward):
    """Each autotune candidate is correct: several row/column tiles and feature chunks, ragged edges."""
    audio, visual = _features(2, 70, 150, dtype, device)
    with pinned(contrastive_fwd=forward, contrastive_bwd=backward):
        _compare(audio, visual, _keep(70, "random", device), dtype=dtype)


def test_distributed_rows_with_large_tiles(device):
    """A rank's loss rows inside larger tiles: the backward's partner ranges start mid-tile."""
    from maavt_fast.kernels.contrastive import contrastive_backward, contrastive_forward
    audio, visual = _features(1, 70, 40, torch.float32, device)
    keep = _keep(70, "random", device)
    big = TileConfig(64, 64, 64, 8, 2)
    ref = [audio.double().requires_grad_(), visual.double().requires_grad_()]
    want = blockwise_contrastive_loss_reference(*ref, keep, 0.1, reduction="none", row_start=35, row_count=20)
    want_grads = torch.autograd.grad(want.sum(), ref)
    temp, k = torch.tensor(0.1, device=device), keep.view(torch.uint8)
    with pinned(contrastive_fwd=big, contrastive_bwd=big):
        sums, lse1, lse2 = contrastive_forward(audio, visual, k, temp, 35, 20, True)
        da, dv, _ = contrastive_backward(audio, visual, k, temp, lse1, lse2, 1 / keep.sum().float().reshape(1), 35,
                                         True)
    torch.testing.assert_close(sums.double() / keep.sum(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(da.double(), want_grads[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dv.double(), want_grads[1], atol=1e-5, rtol=1e-5)


def test_tf32_precision_for_fp32_inputs(device):
    audio, visual = _features(2, 9, 40, torch.float32, device)
    _compare(audio, visual, _keep(9, "random", device), tol=TF32_TOL, fp32_precision="tf32")


def test_pinned_configs_are_restored_and_described():
    config = TileConfig(64, 32, 128, 8, 3)
    assert describe(config) == "64x32x128 w8 s3"
    with pinned(contrastive_fwd=config):
        with pinned(contrastive_bwd=contrastive.SMALL[2]):
            from maavt_fast.kernels._launch import _pinned
            assert _pinned == {"contrastive_fwd": config, "contrastive_bwd": contrastive.SMALL[2]}
        assert _pinned == {"contrastive_fwd": config}
    assert _pinned == {}


@pytest.mark.parametrize("pattern", ["all", "one"])
def test_keep_patterns(device, pattern):
    audio, visual = _features(2, 7, 24, torch.float32, device)
    _compare(audio, visual, _keep(7, pattern, device))


def test_all_background_gives_zero_loss_and_gradients(device):
    audio, visual = _features(2, 5, 24, torch.float32, device)
    loss, grads = _compare(audio, visual, _keep(5, "none", device))
    assert torch.equal(loss, torch.zeros_like(loss))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_non_contiguous_inputs(device):
    base_a, base_v = _features(7, 3, 48, torch.float32, device)  # stored (B, L, 2P), read as (L, B, P)
    audio, visual = base_a.transpose(0, 1)[..., ::2], base_v.transpose(0, 1)[..., 1::2]
    assert not audio.is_contiguous()
    _compare(audio, visual, _keep(7, "random", device))
    keep = _keep(14, "random", device)[::2]  # a strided mask too
    assert not keep.is_contiguous()
    _compare(audio, visual, keep)


@pytest.mark.parametrize("temperature", [torch.tensor(0.2), torch.tensor([0.05, 0.1, 0.3])])
def test_learnable_temperature(device, temperature):
    audio, visual = _features(3, 7, 20, torch.float32, device)
    _compare(audio, visual, _keep(7, "random", device), temperature=temperature.to(device))


def test_without_normalisation(device):
    audio, visual = _features(2, 7, 20, torch.float32, device)
    _compare(0.2 * audio, 0.2 * visual, _keep(7, "random", device), normalize=False)


def test_mean_reduction_and_module(device):
    from maavt_fast.ops import BlockwiseContrastiveLoss
    audio, visual = _features(3, 7, 20, torch.float32, device)
    keep = _keep(7, "random", device)
    got = BlockwiseContrastiveLoss(impl="triton")(audio, visual, keep)
    torch.testing.assert_close(got, blockwise_contrastive_loss_reference(audio, visual, keep), atol=1e-5, rtol=1e-5)


def test_auto_runs_the_reference_on_cpu():
    audio, visual = _features(2, 5, 16, torch.float32, "cpu")
    before = LAUNCHES.copy()
    blockwise_contrastive_loss(audio, visual)
    assert LAUNCHES == before


@pytest.mark.parametrize("kwargs,message", [
    (dict(impl="cuda"), "impl must be one of"),
    (dict(reduction="sum"), "reduction must be"),
    (dict(keep=torch.ones(4, dtype=torch.bool)), "keep must be a bool tensor of shape"),
    (dict(temperature=torch.ones(2)), "temperature must be"),
    (dict(fp32_precision="tf32x3"), "fp32_precision must be one of"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    audio, visual = _features(3, 5, 8, torch.float32, "cpu")
    with pytest.raises(ValueError, match=message):
        blockwise_contrastive_loss(audio, visual, **kwargs)


@pytest.mark.parametrize("setup,env_interpret,message", [
    ("import sys; sys.modules['triton'] = None", "1", "needs the triton package"),  # triton missing
    ("", None, "needs CUDA tensors, or TRITON_INTERPRET=1"),  # CPU tensors without the interpreter
])
def test_forced_triton_that_cannot_run_explains(setup, env_interpret, message):
    code = (f"{setup}\n"
            "import torch; from maavt_fast.ops import blockwise_contrastive_loss as f\n"
            "a = torch.randn(2, 3, 8); f(a, a)\n"  # impl="auto" still works
            "try: f(a, a, impl='triton')\n"
            "except RuntimeError as e: print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if env_interpret:
        env["TRITON_INTERPRET"] = env_interpret
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert message in out


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_large_batch_on_gpu(dtype):
    audio, visual = _features(12, 1024, 512, dtype, "cuda")
    _compare(audio, visual, _keep(1024, "random", "cuda"), dtype=dtype)
