"""Fused group attention vs its PyTorch reference: output and the gradients of x and every weight.

On CPU the Triton kernels run in the interpreter: TRITON_INTERPRET=1 must be set before import
(`make test` does). Without it the kernel tests fail (they are never skipped).
"""
from __future__ import annotations

import pytest
import torch

from maavt_fast.kernels._launch import LAUNCHES
from maavt_fast.ops import GroupAttention, group_attention, group_attention_reference

# Tolerance per input dtype (atol = rtol) against the reference computed in fp64 on the same inputs. The
# kernels' dots run in the input dtype, so q, k, v, the probabilities and the gradient scratch are rounded
# to it (as flash-attention does): about ten units of the dtype's rounding (2^-11 fp16, 2^-8 bf16). Under
# the interpreter bf16 dots run on widened operands (exact products), so the bf16 roundings are tested too.
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}
TF32_TOL = 5e-3  # fp32 inputs with fp32_precision="tf32": 10-bit mantissa products on a GPU
KERNELS = ("group_attention_fwd", "group_attention_bwd", "group_attention_wgrad")


def _inputs(G, M, n, D, dtype, device, seed=0):
    """x (G, M, n, D) and the four stacked weights, scaled like nn.Linear's default initialisation."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(G, M, n, D), (G, 3 * D, D), (G, 3 * D), (G, D, D), (G, D)]
    scales = [1.0] + [D ** -0.5] * 4
    return [(torch.randn(s, generator=g) * c).to(device, dtype) for s, c in zip(shapes, scales)]


def _out_and_grads(fn, tensors, upstream, num_heads, **kwargs):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves, num_heads, **kwargs)
    return out, torch.autograd.grad(out, leaves, upstream.to(out.dtype))


def _compare(tensors, num_heads, dtype=torch.float32, tol=None, **kwargs):
    # upstream gradient in the input dtype, so both sides see the same values
    upstream = torch.randn(tensors[0].shape, generator=torch.Generator().manual_seed(1)).to(tensors[0].device, dtype)
    before = LAUNCHES.copy()
    got, got_grads = _out_and_grads(group_attention, tensors, upstream, num_heads, impl="triton", **kwargs)
    assert all(LAUNCHES[k] == before[k] + 1 for k in KERNELS)
    want, want_grads = _out_and_grads(group_attention_reference, [t.double() for t in tensors], upstream, num_heads)
    tol = tol or TOL[dtype]
    assert got.dtype == dtype and all(g.dtype == dtype for g in got_grads)
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g.double(), w, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("G,M,n,D,heads", [(1, 1, 1, 16, 1), (3, 1, 5, 48, 4), (2, 3, 17, 40, 2), (1, 2, 5, 24, 3)])
def test_matches_reference(device, G, M, n, D, heads, dtype):
    _compare(_inputs(G, M, n, D, dtype, device), heads, dtype)


def test_tf32_precision_for_fp32_inputs(device):
    _compare(_inputs(2, 2, 5, 32, torch.float32, device), 2, tol=TF32_TOL, fp32_precision="tf32")


def test_bad_fp32_precision():
    with pytest.raises(ValueError, match="fp32_precision must be one of"):
        group_attention(*_inputs(1, 1, 5, 16, torch.float32, "cpu"), 2, fp32_precision="bf16")


def test_non_contiguous_inputs(device):
    x, wqkv, bqkv, wproj, bproj = _inputs(2, 3, 5, 24, torch.float32, device)
    x = x.transpose(1, 2).contiguous().transpose(1, 2)  # stored (G, n, M, D)
    wqkv = wqkv.transpose(1, 2).contiguous().transpose(1, 2)  # stored (G, D, 3D)
    bqkv = torch.stack([bqkv, bqkv], dim=-1)[..., 0]  # stride 2
    assert not (x.is_contiguous() or wqkv.is_contiguous() or bqkv.is_contiguous())
    _compare([x, wqkv, bqkv, wproj, bproj], 2)


def test_module_matches_reference(device):
    module = GroupAttention(3, 24, 2, impl="triton").to(device)
    x = torch.randn(3, 1, 5, 24, device=device)
    want = group_attention_reference(x, module.qkv_weight, module.qkv_bias, module.proj_weight, module.proj_bias, 2)
    torch.testing.assert_close(module(x), want, atol=1e-5, rtol=1e-5)


def test_auto_runs_the_reference_on_cpu():
    before = LAUNCHES.copy()
    group_attention(*_inputs(1, 1, 5, 16, torch.float32, "cpu"), 2)
    assert LAUNCHES == before


def test_too_many_tokens_for_the_kernel(device):
    with pytest.raises(ValueError, match="at most 64 tokens"):
        group_attention(*_inputs(1, 1, 65, 16, torch.float32, device), 2, impl="triton")


def test_bad_shapes_raise_clear_errors():
    x, wqkv, bqkv, wproj, bproj = _inputs(2, 1, 5, 16, torch.float32, "cpu")
    with pytest.raises(ValueError, match="qkv_weight must be"):
        group_attention(x, wqkv[:1], bqkv, wproj, bproj, 2)
    with pytest.raises(ValueError, match="must divide"):
        group_attention(x, wqkv, bqkv, wproj, bproj, 3)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("M", [1, 64])
def test_model_sizes_on_gpu(dtype, M):
    _compare(_inputs(3, M, 5, 768, dtype, "cuda"), 8, dtype)


@pytest.mark.gpu
def test_auto_runs_the_reference_above_the_kernels_token_limit():
    from maavt_fast.kernels.group_attention import MAX_TOKENS

    inputs = _inputs(1, 2, MAX_TOKENS + 1, 16, torch.float32, "cuda")
    before = LAUNCHES.copy()
    out = group_attention(*inputs, 2)
    assert LAUNCHES == before
    torch.testing.assert_close(out, group_attention_reference(*inputs, 2))
