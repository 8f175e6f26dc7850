"""Fused blockwise sigmoid (SigLIP) loss vs its PyTorch reference: value and every gradient; the custom ops,
torch.compile, the drop-in SigLipLoss against OpenCLIP's formula, and gather=True across 2 gloo ranks.

On CPU the Triton kernels run in the interpreter: TRITON_INTERPRET=1 must be set before import
(`make test` does). Without it the kernel tests fail (they are never skipped).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from maavt_fast.kernels._launch import LAUNCHES
from maavt_fast.ops import (BlockwiseSigmoidLoss, SigLipLoss, blockwise_sigmoid_loss,
                            blockwise_sigmoid_loss_reference)
from maavt_fast.ops._dispatch import kernel_device
from maavt_fast.ops.sigmoid import sigmoid_loss_sums, sigmoid_loss_sums_reference
from test_ops_contrastive import _features, _keep  # the same inputs and keep patterns as the InfoNCE tests
from test_ops_distributed import _free_port, _in_group  # the gloo spawn pattern with its careful teardown

# Tolerance per input dtype (atol = rtol) against the reference in fp64 on the same (exactly represented)
# inputs. fp32: fp32 accumulation only. fp16: the dots see fp16 operands (the pair gradients and unit
# vectors are rounded to fp16, 2^-11) and the gradients are stored in fp16. bf16: the same with 2^-8
# rounding (the interpreter upcasts bf16 dot operands but stores bf16 by truncation, up to 2^-7).
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def _loss_and_grads(fn, audio, visual, scale, bias, upstream, **kwargs):
    """Per-block losses (L,) and the gradients of <losses, upstream> w.r.t. audio, visual (and scale, bias)."""
    leaves = [audio.detach().clone().requires_grad_(), visual.detach().clone().requires_grad_()]
    params = []
    for value in (scale, bias):
        if isinstance(value, torch.Tensor):
            value = value.detach().clone().requires_grad_()
            leaves.append(value)
        params.append(value)
    loss = fn(leaves[0], leaves[1], logit_scale=params[0], logit_bias=params[1], reduction="none", **kwargs)
    return loss, torch.autograd.grad((loss * upstream).sum(), leaves)


def _compare(audio, visual, keep, scale=10.0, bias=-10.0, normalize=True, tol=None):
    """Triton (one forward and one backward launch) against the fp64 reference; returns the Triton results."""
    upstream = torch.linspace(0.5, 1.5, audio.shape[0], device=audio.device)
    before = LAUNCHES.copy()
    got, got_grads = _loss_and_grads(blockwise_sigmoid_loss, audio, visual, scale, bias, upstream,
                                     keep=keep, normalize=normalize, impl="triton")
    assert LAUNCHES["sigmoid_fwd"] == before["sigmoid_fwd"] + 1
    assert LAUNCHES["sigmoid_bwd"] == before["sigmoid_bwd"] + 1
    as64 = [x.double() if isinstance(x, torch.Tensor) else x for x in (scale, bias)]
    want, want_grads = _loss_and_grads(blockwise_sigmoid_loss_reference, audio.double(), visual.double(), *as64,
                                       upstream.double(), keep=keep, normalize=normalize)
    tol = tol or TOL[audio.dtype]
    assert got_grads[0].dtype == got_grads[1].dtype == audio.dtype
    for name, g, w in zip(("loss", "audio", "visual", "scale", "bias"), (got, *got_grads), (want, *want_grads)):
        # atol scales with the tensor's magnitude: at |z| ~ 1e4 the gradients reach 1e3 and cancel in fp32
        atol = tol * max(1.0, w.abs().max().item())
        torch.testing.assert_close(g.double(), w, atol=atol, rtol=tol, msg=lambda m: f"{name}: {m}")
    return got, got_grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("L,B,P", [(2, 1, 16), (3, 7, 130), (2, 33, 16)])
def test_matches_reference(device, L, B, P, dtype):
    audio, visual = _features(L, B, P, dtype, device)
    _compare(audio, visual, _keep(B, "random", device), torch.full((L,), 5.0, device=device),
             torch.tensor(-2.0, device=device))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_batch_several_tiles(device, dtype):
    audio, visual = _features(1, 300, 16, dtype, device)
    _compare(audio, visual, _keep(300, "random", device), torch.tensor(8.0, device=device),
             torch.tensor(-6.0, device=device))


@pytest.mark.parametrize("pattern", ["all", "one"])
def test_keep_patterns(device, pattern):
    audio, visual = _features(2, 7, 24, torch.float32, device)
    _compare(audio, visual, _keep(7, pattern, device))


def test_all_background_gives_zero_loss_and_gradients(device):
    audio, visual = _features(2, 5, 24, torch.float32, device)
    loss, grads = _compare(audio, visual, _keep(5, "none", device), torch.tensor(3.0, device=device),
                           torch.tensor(1.0, device=device))
    assert torch.equal(loss, torch.zeros_like(loss))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_non_contiguous_inputs(device):
    base_a, base_v = _features(7, 3, 48, torch.float32, device)  # stored (B, L, 2P), read as (L, B, P)
    audio, visual = base_a.transpose(0, 1)[..., ::2], base_v.transpose(0, 1)[..., 1::2]
    assert not audio.is_contiguous()
    keep = _keep(14, "random", device)[::2]  # a strided mask too
    assert not keep.is_contiguous()
    scale = torch.tensor([[4.0, 0.0], [6.0, 0.0], [9.0, 0.0]], device=device)[:, 0]  # strided (L,) scale
    _compare(audio, visual, keep, scale, torch.tensor(-3.0, device=device))


@pytest.mark.parametrize("scale,bias", [(2e4, 60.0), (2e4, -60.0), (1e3, 0.0)])
def test_saturated_sigmoids_stay_finite(device, scale, bias):
    """|z| up to ~2e4: -log sigmoid must not overflow (softplus form) and the gradients stay exact."""
    audio, visual = _features(2, 9, 16, torch.float32, device)
    loss, grads = _compare(audio, visual, _keep(9, "random", device), torch.tensor(scale, device=device),
                           torch.tensor(bias, device=device))
    assert torch.isfinite(loss).all() and all(torch.isfinite(g).all() for g in grads)


def test_tiny_pair_losses_keep_their_precision(device):
    """Every pair far on its right side (positives z ~ +20, negatives z <~ -10): the loss is a sum of
    log1p(e) with tiny e, where a plain log(1 + e) in fp32 is off by up to 1e-3 relative (or rounds to 0)."""
    g = torch.Generator().manual_seed(5)
    visual = torch.linalg.qr(torch.randn(2, 16, 16, generator=g))[0][:, :7]  # orthonormal rows: cos 0 off-diagonal
    audio = (visual + 0.05 * torch.randn(2, 7, 16, generator=g)).to(device)
    visual, keep = visual.to(device), _keep(7, "all", device)
    scale, bias = torch.tensor(40.0, device=device), torch.tensor(-20.0, device=device)
    got = blockwise_sigmoid_loss(audio, visual, keep, scale, bias, reduction="none", impl="triton")
    want = blockwise_sigmoid_loss_reference(audio.double(), visual.double(), keep, scale.double(), bias.double(),
                                            reduction="none")
    assert (want < 1e-3).all()
    torch.testing.assert_close(got.double(), want, atol=0.0, rtol=1e-5)


def test_float_scale_and_bias(device):
    audio, visual = _features(2, 7, 20, torch.float32, device)
    _compare(audio, visual, _keep(7, "random", device), 7.0, -4.0)


def test_without_normalisation(device):
    audio, visual = _features(2, 7, 20, torch.float32, device)
    _compare(0.2 * audio, 0.2 * visual, _keep(7, "random", device), torch.tensor(1.5, device=device),
             torch.tensor(-1.0, device=device), normalize=False)


def test_local_rows_against_all_columns(device):
    """The distributed local share: rows of one "rank" against all columns; the shares sum to the whole."""
    audio, visual = _features(2, 12, 20, torch.float32, device)
    keep = _keep(12, "random", device)
    shares = []
    for start in (0, 5):
        rows = slice(start, start + (5 if start == 0 else 7))
        got = sigmoid_loss_sums(audio, visual[:, rows], keep, 6.0, -3.0, True, start, "triton")
        want = sigmoid_loss_sums_reference(audio, visual[:, rows], keep, 6.0, -3.0, True, start)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        shares.append(got)
    whole = blockwise_sigmoid_loss_reference(audio, visual, keep, 6.0, -3.0, reduction="none")
    torch.testing.assert_close(sum(shares) / keep.sum(), whole, atol=1e-5, rtol=1e-5)


def test_two_dimensional_inputs_mean_and_module(device):
    audio, visual = _features(3, 7, 20, torch.float32, device)
    keep = _keep(7, "random", device)
    one = blockwise_sigmoid_loss(audio[0], visual[0], keep, impl="triton", reduction="none")
    assert one.shape == ()
    torch.testing.assert_close(one, blockwise_sigmoid_loss_reference(audio, visual, keep, reduction="none")[0])
    module = BlockwiseSigmoidLoss(blocks=3, impl="triton").to(device)
    torch.testing.assert_close(module.log_scale.exp(), torch.full((3,), 10.0, device=device))
    torch.testing.assert_close(module(audio, visual, keep), blockwise_sigmoid_loss_reference(audio, visual, keep))


def test_auto_runs_the_reference_on_cpu():
    audio, visual = _features(2, 5, 16, torch.float32, "cpu")
    before = LAUNCHES.copy()
    blockwise_sigmoid_loss(audio, visual)
    assert LAUNCHES == before


@pytest.mark.parametrize("kwargs,message", [
    (dict(impl="cuda"), "impl must be one of"),
    (dict(reduction="sum"), "reduction must be"),
    (dict(keep=torch.ones(4, dtype=torch.bool)), "keep must be a bool tensor of shape"),
    (dict(logit_scale=torch.ones(2)), "logit_scale must be"),
    (dict(logit_bias=torch.ones(4)), "logit_bias must be"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    audio, visual = _features(3, 5, 8, torch.float32, "cpu")
    with pytest.raises(ValueError, match=message):
        blockwise_sigmoid_loss(audio, visual, **kwargs)


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="audio and visual must both be"):
        blockwise_sigmoid_loss(torch.randn(2, 5, 8), torch.randn(2, 4, 8))


# ----------------------------------------------------------------------------- custom op and torch.compile
def test_opcheck(device):
    keep = torch.tensor([True, False, True, True, True], device=device)
    audio = torch.randn(5, 2, 20, device=device).transpose(0, 1).requires_grad_()  # non-contiguous: fake strides
    visual = torch.randn(2, 3, 20, device=device, requires_grad=True)  # rows 1..3 of the batch
    scale = torch.tensor([4.0, 6.0], device=device, requires_grad=True)
    bias = torch.tensor(-2.0, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.maavt.blockwise_sigmoid_fwd.default, (audio, visual, keep, scale, bias, 1, True))
    grad = torch.tensor([1.0, 0.5], device=device)
    torch.library.opcheck(torch.ops.maavt.blockwise_sigmoid_bwd.default,
                          (grad, audio.detach(), visual.detach(), keep, scale.detach(), bias.detach(), 1, True))


class _TinySigmoidModel(torch.nn.Module):
    """Blockwise projections into the sigmoid loss with learnable per-block log-scale and bias."""

    def __init__(self, blocks=2, dim=24, proj=16):
        super().__init__()
        self.proj_a, self.proj_v = torch.nn.Linear(dim, proj), torch.nn.Linear(dim, proj)
        self.loss = BlockwiseSigmoidLoss(blocks, impl="triton")

    def forward(self, x, keep):
        return self.loss(self.proj_a(x), self.proj_v(x.flip(1)), keep)


def test_compile_fullgraph_matches_eager(device):
    """One graph through the custom ops' fake and autograd registrations. The ops are opaque to every backend:
    aot_eager traces the same joint graph as inductor without its minutes of C++ code generation on CPU."""
    model = _TinySigmoidModel().to(device)
    x, keep = torch.randn(2, 7, 24, device=device), _keep(7, "random", device)
    eager = model(x, keep)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    before = LAUNCHES.copy()
    loss = compiled(x, keep)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    for name in ("sigmoid_fwd", "sigmoid_bwd"):
        assert LAUNCHES[name] > before[name], f"{name} did not run inside the compiled graph"
    torch.testing.assert_close(loss, eager, atol=1e-5, rtol=1e-5)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_kernels_compile_for_hopper_without_a_gpu():
    """The interpreter accepts code the GPU compiler rejects: compile both kernels (bf16, the last autotune
    candidate of each) for sm_90 with the compile check; neither may spill registers."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import torch; from maavt_fast.kernels._aot_check import check, problems\n"
            "rows = check(90, (torch.bfloat16,), quick=True, ops=('sigmoid',))\n"
            "print(*[r.kernel for r in rows], 'PROBLEMS', problems(rows))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["sigmoid_fwd", "sigmoid_bwd", "PROBLEMS", "[]"], out.stdout


# ----------------------------------------------------------------------------- drop-in SigLipLoss
def open_clip_siglip(image, text, logit_scale, logit_bias):
    """OpenCLIP's SigLipLoss._loss, written out: -sum log sigmoid(labels * logits) / batch."""
    logits = logit_scale * image @ text.T
    if logit_bias is not None:
        logits = logits + logit_bias
    labels = 2 * torch.eye(image.shape[0], dtype=image.dtype, device=image.device) - 1
    return -F.logsigmoid(labels * logits).sum() / image.shape[0]


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_siglip_loss_matches_open_clip(device, impl, with_bias):
    g = torch.Generator().manual_seed(3)
    image = F.normalize(torch.randn(9, 20, generator=g), dim=-1).to(device)
    text = F.normalize(image.cpu() + torch.randn(9, 20, generator=g), dim=-1).to(device)
    params = [torch.tensor(10.0, device=device).log(), torch.tensor(-10.0, device=device)]

    def run(fn):
        leaves = [image.clone().requires_grad_(), text.clone().requires_grad_(),
                  *(p.clone().requires_grad_() for p in params)]
        loss = fn(leaves[0], leaves[1], leaves[2].exp(), leaves[3] if with_bias else None)
        return loss, torch.autograd.grad(loss, leaves[:4] if with_bias else leaves[:3])

    got, got_grads = run(lambda *a: SigLipLoss(impl=impl)(*a, output_dict=True)["contrastive_loss"])
    want, want_grads = run(open_clip_siglip)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for g_, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g_, w, atol=1e-5, rtol=1e-5)


def test_siglip_loss_arguments():
    with pytest.raises(ValueError, match="dist_impl must be one of"):
        SigLipLoss(dist_impl="ring")
    with pytest.raises(RuntimeError, match="needs an initialised process group"):
        SigLipLoss(rank=0, world_size=2)(torch.randn(3, 4), torch.randn(3, 4), 10.0, -10.0)


# ----------------------------------------------------------------------------- gather=True on 2 gloo ranks
WORLD, L, B_LOCAL, P = 2, 2, 4, 12


def _global_batch():
    g = torch.Generator().manual_seed(1)
    keep = torch.tensor([True, False, True, True, True, True, False, True])  # background rows on both ranks
    audio, visual = torch.randn(L, WORLD * B_LOCAL, P, generator=g), torch.randn(L, WORLD * B_LOCAL, P, generator=g)
    return audio, visual, keep, torch.tensor([5.0, 8.0]), torch.tensor(-3.0)


def _sigmoid_step(impl, rows=slice(None), gather=False, group=None):
    audio, visual, keep, scale, bias = _global_batch()
    leaves = [audio[:, rows].clone().requires_grad_(), visual[:, rows].clone().requires_grad_(),
              scale.requires_grad_(), bias.requires_grad_()]
    losses = blockwise_sigmoid_loss(*leaves[:2], keep[rows], leaves[2], leaves[3], reduction="none", impl=impl,
                                    gather=gather, group=group)
    (losses * torch.tensor([0.5, 2.0])).sum().backward()
    return losses.detach(), [t.grad for t in leaves]


def _siglip_step(impl, rank=0, world=1):
    audio, visual, _, scale, bias = _global_batch()
    rows = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL) if world > 1 else slice(None)
    leaves = [visual[0, rows].clone().requires_grad_(), audio[0, rows].clone().requires_grad_(),
              scale[:1].clone().requires_grad_(), bias.clone().requires_grad_()]
    loss = SigLipLoss(rank=rank, world_size=world, impl=impl)(*leaves)
    loss.backward()
    return loss.detach(), [t.grad for t in leaves]


def _rank(rank, impls, out_dir):
    rows = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    results = {impl: _sigmoid_step(impl, rows, gather=True) for impl in impls}
    results.update({f"siglip:{impl}": _siglip_step(impl, rank, WORLD) for impl in impls})
    results["group"] = _sigmoid_step("torch", rows, gather=True, group=dist.new_group([1, 0]))  # an explicit group
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


def _open_clip_rank_share(rank):
    """OpenCLIP's per-rank value and gradients: local images against all texts / local batch."""
    audio, visual, _, scale, bias = _global_batch()
    leaves = [visual[0].clone().requires_grad_(), audio[0].clone().requires_grad_(),
              scale[:1].clone().requires_grad_(), bias.clone().requires_grad_()]
    rows = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    logits = leaves[2] * leaves[0][rows] @ leaves[1].T + leaves[3]
    labels = -torch.ones(B_LOCAL, WORLD * B_LOCAL)
    labels[:, rows] += 2 * torch.eye(B_LOCAL)
    loss = -F.logsigmoid(labels * logits).sum() / B_LOCAL
    loss.backward()
    return loss.detach(), [t.grad for t in leaves]


def test_gather_matches_single_process(tmp_path):
    """Loss = the full-batch loss on every rank; feature gradients = W x the full-batch ones of the rank's rows
    (DDP divides by W); scale and bias gradients average over ranks to the full-batch ones. SigLipLoss with
    world_size=2 matches OpenCLIP's per-rank loss; texts' gradients of all ranks' losses sum onto their owner."""
    if kernel_device() is None:
        pytest.fail("Triton kernels cannot run: no CUDA device and TRITON_INTERPRET=1 was not set before import")
    impls = ("torch", "triton")
    mp.spawn(_in_group, args=(_free_port(), _rank, impls, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    want_loss, (want_a, want_v, want_s, want_b) = _sigmoid_step("torch")
    shares = [_open_clip_rank_share(r) for r in range(WORLD)]
    for results in ranks:
        torch.testing.assert_close(results["group"], results["torch"], msg="an explicit group gives the same")
    for impl in impls:
        for rank, results in enumerate(ranks):
            rows = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
            loss, (grad_a, grad_v, _, _) = results[impl]
            torch.testing.assert_close(loss, want_loss, atol=1e-5, rtol=1e-5, msg=f"{impl} rank {rank} loss")
            torch.testing.assert_close(grad_a / WORLD, want_a[:, rows], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(grad_v / WORLD, want_v[:, rows], atol=1e-5, rtol=1e-5)
            loss, (grad_img, _, grad_s, grad_b) = results[f"siglip:{impl}"]
            torch.testing.assert_close(loss, shares[rank][0], atol=1e-5, rtol=1e-5, msg=f"{impl} siglip {rank}")
            torch.testing.assert_close(grad_img, shares[rank][1][0][rows], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close((grad_s, grad_b), (shares[rank][1][2], shares[rank][1][3]), atol=1e-5,
                                       rtol=1e-5)
            grad_txt = ranks[rank][f"siglip:{impl}"][1][1]
            torch.testing.assert_close(grad_txt, sum(s[1][1] for s in shares)[rows], atol=1e-5, rtol=1e-5)
        for i, want in ((2, want_s), (3, want_b)):
            mean = torch.stack([results[impl][1][i] for results in ranks]).mean(0)
            torch.testing.assert_close(mean, want, atol=1e-5, rtol=1e-5, msg=f"{impl} scale/bias")


# ----------------------------------------------------------------------------- GPU only (benchmarks/gpu_check.sh)
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_large_batch_on_gpu(dtype):
    audio, visual = _features(12, 1024, 512, dtype, "cuda")
    _compare(audio, visual, _keep(1024, "random", "cuda"), torch.full((12,), 10.0, device="cuda"),
             torch.tensor(-10.0, device="cuda"))


@pytest.mark.gpu
def test_huge_batch_runs_in_linear_memory():
    """B = 32768: the (B, B) logits alone would take 4 GiB in fp32; forward + backward stay O(B P)."""
    audio, visual = (x.requires_grad_() for x in _features(1, 32768, 512, torch.bfloat16, "cuda"))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    loss = blockwise_sigmoid_loss(audio, visual, impl="triton")
    loss.backward()
    torch.cuda.synchronize()
    assert torch.isfinite(loss)
    assert torch.cuda.max_memory_allocated() - start < 256 * 2**20
