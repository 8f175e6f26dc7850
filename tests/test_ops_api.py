"""The ops' public conventions: 2-D features, logit_scale, argument validation, impl="auto" fallback with a
one-time log line, autocast dtypes, dtype mismatches and the modules' repr.

The kernel cases run in the Triton interpreter on CPU (TRITON_INTERPRET=1 set before import); the "CUDA"
condition of impl="auto" is emulated by patching the dispatcher's device check (`all_on_cuda`).
"""
from __future__ import annotations

import logging

import pytest
import torch

from maavt_fast.kernels._launch import LAUNCHES
from maavt_fast.ops import (BlockwiseContrastiveLoss, ClipLoss, GroupAttention, blockwise_contrastive_loss,
                            blockwise_contrastive_loss_reference, group_attention, group_attention_reference)
from maavt_fast.ops import _dispatch


def _features(L, B, P, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(L, B, P, generator=g, dtype=dtype)
    return audio, 0.5 * audio + torch.randn(L, B, P, generator=g, dtype=dtype)


def _attention_inputs(G, M, n, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes, scales = [(G, M, n, D), (G, 3 * D, D), (G, 3 * D), (G, D, D), (G, D)], [1.0] + [D ** -0.5] * 4
    return [(torch.randn(s, generator=g) * c).to(dtype) for s, c in zip(shapes, scales)]


def _value_and_grads(fn, tensors, *args, **kwargs):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves, *args, **kwargs)
    return out.detach(), torch.autograd.grad(out.float().square().sum(), leaves)


def _assert_same(got, want, tol=1e-5):
    torch.testing.assert_close(got[0], want[0], atol=tol, rtol=tol)
    for g, w in zip(got[1], want[1]):
        torch.testing.assert_close(g, w, atol=tol, rtol=tol)


# --- 2-D features and logit_scale -----------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_two_dimensional_features_are_one_block(device, impl, reduction):
    audio, visual = (t.to(device) for t in _features(1, 6, 12))
    keep = torch.tensor([True, True, False, True, True, True], device=device)
    got = _value_and_grads(lambda a, v: blockwise_contrastive_loss(a, v, keep, reduction=reduction, impl=impl),
                           [audio[0], visual[0]])
    assert got[0].shape == ()
    want = _value_and_grads(lambda a, v: blockwise_contrastive_loss(a, v, keep, reduction=reduction, impl=impl)
                            .squeeze(), [audio, visual])
    _assert_same(got, (want[0], [g[0] for g in want[1]]))


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_logit_scale_equals_the_inverse_temperature_and_gets_its_gradient(device, impl):
    audio, visual = (t.to(device) for t in _features(2, 5, 12))
    log_scale = torch.tensor(2.3, device=device, requires_grad=True)
    loss = blockwise_contrastive_loss(audio, visual, logit_scale=log_scale.exp(), impl=impl)
    (grad,) = torch.autograd.grad(loss, log_scale)
    # the same function of log_scale written with the reference and a temperature
    log_scale_ref = log_scale.detach().double().requires_grad_()
    want = blockwise_contrastive_loss_reference(audio.double(), visual.double(), temperature=(-log_scale_ref).exp())
    (want_grad,) = torch.autograd.grad(want, log_scale_ref)
    torch.testing.assert_close(loss.double(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad.double(), want_grad, atol=1e-5, rtol=1e-5)
    assert grad.abs() > 1e-4  # a real gradient, not a zero that would also match
    floats = blockwise_contrastive_loss(audio, visual, logit_scale=10.0, impl=impl)
    torch.testing.assert_close(floats, blockwise_contrastive_loss(audio, visual, temperature=0.1, impl=impl))


@pytest.mark.parametrize("kwargs,message", [
    (dict(temperature=0.0), "temperature must be finite and > 0; got 0.0"),
    (dict(temperature=-0.07), "temperature must be finite and > 0"),
    (dict(temperature=float("nan")), "temperature must be finite and > 0"),
    (dict(temperature=torch.tensor([0.1, -0.1])), r"temperature must be finite and > 0; got \[0.1"),
    (dict(logit_scale=0), "logit_scale must be finite and > 0"),
    (dict(logit_scale=float("inf")), "logit_scale must be finite and > 0"),
    (dict(logit_scale=torch.tensor(-1.0, requires_grad=True)), "logit_scale must be finite and > 0"),
    (dict(temperature=0.1, logit_scale=10.0), "either temperature or logit_scale"),
])
def test_bad_temperature_or_logit_scale_raise(kwargs, message):
    audio, visual = _features(2, 4, 8)
    with pytest.raises(ValueError, match=message):
        blockwise_contrastive_loss(audio, visual, **kwargs)


def test_bad_shapes_and_module_temperature_raise():
    audio, visual = _features(2, 4, 8)
    with pytest.raises(ValueError, match=r"must both be \(B, P\) or \(L, B, P\)"):
        blockwise_contrastive_loss(audio[0], visual)
    with pytest.raises(ValueError, match="must have one shape"):
        blockwise_contrastive_loss(audio, visual[:, :3])
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        BlockwiseContrastiveLoss(temperature=0.0)


def test_mixed_feature_dtypes_are_promoted():
    audio, visual = _features(2, 4, 8)
    got = blockwise_contrastive_loss(audio.half(), visual, impl="torch")
    torch.testing.assert_close(got, blockwise_contrastive_loss(audio.half().float(), visual, impl="torch"))


# --- impl="auto": the kernel only where it supports the inputs, else the reference and one log line -------------------

@pytest.fixture
def emulated_cuda(monkeypatch, device):
    """impl="auto" treats the (interpreter) CPU tensors as CUDA ones; fallback log lines start afresh."""
    monkeypatch.setattr(_dispatch, "all_on_cuda", lambda tensors: True)
    monkeypatch.setattr(_dispatch, "_LOGGED", set())
    return device


def _contrastive_call(dtype, impl):
    audio, visual = _features(2, 5, 8, dtype)
    return lambda: blockwise_contrastive_loss(audio, visual, impl=impl), "contrastive_fwd"


def _attention_call(dtype, n, impl):
    tensors = _attention_inputs(1, 2, n, 16, dtype)
    return lambda: group_attention(*tensors, 2, impl=impl), "group_attention_fwd"


UNSUPPORTED = {  # case -> (call factory, error of impl="triton", reason in the log line)
    "contrastive float64": (lambda impl: _contrastive_call(torch.float64, impl), TypeError, "torch.float64 inputs"),
    "attention float64": (lambda impl: _attention_call(torch.float64, 5, impl), TypeError, "torch.float64 inputs"),
    "attention 65 tokens": (lambda impl: _attention_call(torch.float32, 65, impl), ValueError,
                            "sequences of more than 64 tokens"),
}


@pytest.mark.parametrize("case", UNSUPPORTED)
def test_auto_falls_back_with_one_log_line_and_triton_raises(emulated_cuda, caplog, case):
    make, error, reason = UNSUPPORTED[case]
    call, _ = make("auto")
    before = LAUNCHES.copy()
    with caplog.at_level(logging.WARNING, logger="maavt_fast.ops"):
        first = call()
        again = call()
    assert LAUNCHES == before, "impl='auto' launched a kernel on inputs it does not support"
    torch.testing.assert_close(first, again)
    lines = [r.getMessage() for r in caplog.records if r.name == "maavt_fast.ops"]
    assert len(lines) == 1 and reason in lines[0] and "PyTorch reference" in lines[0], lines
    forced, _ = make("triton")
    with pytest.raises(error):
        forced()


@pytest.mark.parametrize("call", [lambda: _contrastive_call(torch.float32, "auto"),
                                  lambda: _attention_call(torch.float32, 64, "auto")])
def test_auto_runs_the_kernel_on_supported_cuda_inputs(emulated_cuda, caplog, call):
    fn, kernel = call()
    before = LAUNCHES[kernel]
    with caplog.at_level(logging.WARNING, logger="maavt_fast.ops"):
        fn()
    assert LAUNCHES[kernel] == before + 1
    assert not [r for r in caplog.records if r.name == "maavt_fast.ops"]


def test_fallback_under_compile_needs_no_graph_break(emulated_cuda):
    tensors = _attention_inputs(1, 1, 5, 16, torch.float64)
    torch._dynamo.reset()
    fn = torch.compile(lambda *t: group_attention(*t, 2), fullgraph=True, backend="eager")
    before = LAUNCHES.copy()
    torch.testing.assert_close(fn(*tensors), group_attention_reference(*tensors, 2))
    assert LAUNCHES == before


def test_auto_on_cpu_tensors_runs_the_reference_silently(caplog, monkeypatch):
    monkeypatch.setattr(_dispatch, "_LOGGED", set())
    before = LAUNCHES.copy()
    with caplog.at_level(logging.WARNING, logger="maavt_fast.ops"):
        group_attention(*_attention_inputs(1, 1, 65, 16, torch.float64), 2)
    assert LAUNCHES == before and not caplog.records


# --- autocast and dtypes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_group_attention_follows_autocast_like_multihead_attention(device, impl):
    module = GroupAttention(1, 16, 2, impl=impl).to(device)
    x = torch.randn(1, 2, 5, 16, device=device)
    mha = torch.nn.MultiheadAttention(16, 2, batch_first=True).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = module(x)
        want_dtype = mha(x[0], x[0], x[0], need_weights=False)[0].dtype
        grads = torch.autograd.grad(out.float().sum(), list(module.parameters()))
    assert want_dtype == out.dtype == torch.bfloat16
    assert all(g.dtype == torch.float32 for g in grads)  # gradients reach the fp32 parameters
    want = group_attention_reference(x.bfloat16().double(), *(p.bfloat16().double() for p in module.parameters()), 2)
    torch.testing.assert_close(out.double(), want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_contrastive_loss_stays_fp32_under_autocast(device, impl):
    audio, visual = (t.to(device) for t in _features(2, 6, 40))
    with torch.autocast(device.type, dtype=torch.bfloat16):
        got = blockwise_contrastive_loss(audio, visual, impl=impl)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, blockwise_contrastive_loss(audio, visual, impl=impl), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_bf16_input_with_fp32_weights_is_refused(device, impl):
    module = GroupAttention(1, 16, 2, impl=impl).to(device)
    with pytest.raises(TypeError, match=r"x is torch.bfloat16 but qkv_weight is torch.float32.*torch.autocast"):
        module(torch.randn(1, 1, 5, 16, device=device, dtype=torch.bfloat16))


def test_modules_describe_themselves():
    assert "groups=3, dim=16, num_heads=2, impl='auto'" in repr(GroupAttention(3, 16, 2))
    assert ("temperature=0.1, normalize=True, reduction='mean', impl='torch', gather=False"
            in repr(BlockwiseContrastiveLoss(0.1, impl="torch")))
    assert "local_loss=True, gather_with_grad=True, rank=0, world_size=1" in repr(ClipLoss(True, True))


@pytest.mark.gpu
def test_dispatch_and_autocast_on_cuda(caplog, monkeypatch):
    """On a real GPU: float64 falls back with one log line, fp32 under bf16 autocast runs the kernel in bf16."""
    monkeypatch.setattr(_dispatch, "_LOGGED", set())
    tensors = [t.cuda() for t in _attention_inputs(2, 3, 5, 32, torch.float64)]
    audio, visual = (t.cuda() for t in _features(2, 6, 40, torch.float64))
    before = LAUNCHES.copy()
    with caplog.at_level(logging.WARNING, logger="maavt_fast.ops"):
        group_attention(*tensors, 2)
        blockwise_contrastive_loss(audio, visual)
    assert LAUNCHES == before
    assert len([r for r in caplog.records if r.name == "maavt_fast.ops"]) == 2
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = group_attention(*(t.float() for t in tensors), 2)
        loss = blockwise_contrastive_loss(audio.float(), visual.float())
    assert out.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert LAUNCHES["group_attention_fwd"] == before["group_attention_fwd"] + 1
    assert LAUNCHES["contrastive_fwd"] == before["contrastive_fwd"] + 1
    torch.testing.assert_close(out.double(), group_attention_reference(*(t.bfloat16().double() for t in tensors), 2),
                               atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(loss.double(), blockwise_contrastive_loss_reference(audio, visual), atol=1e-5, rtol=1e-5)
