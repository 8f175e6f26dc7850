"""`maavt_fast.ops.ClipLoss` gives OpenCLIP's `ClipLoss` value and gradients (features and logit_scale),
on one process and on 2 gloo ranks in each supported mode; unsupported modes are refused clearly.

OpenCLIP's formula is written out below (`_openclip_loss`, after open_clip/loss.py) rather than installed.
The Triton path runs in the interpreter on CPU (TRITON_INTERPRET=1, inherited by the spawned ranks).
"""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.distributed.nn
import torch.multiprocessing as mp
import torch.nn.functional as F

from maavt_fast.kernels._launch import LAUNCHES
from maavt_fast.ops import ClipLoss
from maavt_fast.train.distributed import process_group

WORLD, B_LOCAL, D = 2, 4, 16
IMPLS = ("torch", "triton")
MODES = [dict(local_loss=False, gather_with_grad=False), dict(local_loss=False, gather_with_grad=True),
         dict(local_loss=True, gather_with_grad=True)]


def _openclip_loss(image, text, logit_scale, local_loss=False, gather_with_grad=False, rank=0, world_size=1):
    """OpenCLIP's ClipLoss.forward (gather_features, get_logits, get_ground_truth), written out."""
    if world_size > 1:
        if gather_with_grad:
            all_image = torch.cat(torch.distributed.nn.all_gather(image), dim=0)
            all_text = torch.cat(torch.distributed.nn.all_gather(text), dim=0)
        else:
            images, texts = [torch.zeros_like(image) for _ in range(world_size)], [torch.zeros_like(text)
                                                                                   for _ in range(world_size)]
            dist.all_gather(images, image)
            dist.all_gather(texts, text)
            if not local_loss:  # only the rank's own features carry gradients
                images[rank], texts[rank] = image, text
            all_image, all_text = torch.cat(images, dim=0), torch.cat(texts, dim=0)
        if local_loss:
            logits_per_image = logit_scale * image @ all_text.T
            logits_per_text = logit_scale * text @ all_image.T
        else:
            logits_per_image = logit_scale * all_image @ all_text.T
            logits_per_text = logits_per_image.T
    else:
        logits_per_image = logit_scale * image @ text.T
        logits_per_text = logit_scale * text @ image.T
    labels = torch.arange(logits_per_image.shape[0])
    if world_size > 1 and local_loss:
        labels = labels + logits_per_image.shape[0] * rank
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def _batch(rows=slice(None)):
    """Normalised image and text features (W*B_LOCAL, D), correlated so the loss is informative."""
    g = torch.Generator().manual_seed(3)
    image = torch.randn(WORLD * B_LOCAL, D, generator=g)
    text = image + torch.randn(WORLD * B_LOCAL, D, generator=g)
    return F.normalize(image, dim=-1)[rows], F.normalize(text, dim=-1)[rows]


def _value_and_grads(loss_fn, rows=slice(None)):
    """Loss and the gradients of (image, text, log_scale), with logit_scale = log_scale.exp() as in OpenCLIP."""
    image, text = (t.clone().requires_grad_() for t in _batch(rows))
    log_scale = torch.tensor(2.0, requires_grad=True)
    loss = loss_fn(image, text, log_scale.exp())
    loss.backward()
    return loss.detach(), [image.grad, text.grad, log_scale.grad]


def _assert_same(got, want, msg):
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5, msg=f"{msg}: value")
    for name, g, w in zip(("image", "text", "logit_scale"), got[1], want[1]):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5, msg=f"{msg}: {name} gradient")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("local_loss,gather_with_grad", [(False, False), (True, True)])
def test_one_process_matches_openclip(device, impl, local_loss, gather_with_grad):
    # with world_size=1, OpenCLIP ignores local_loss and gather_with_grad; so do we
    before = LAUNCHES["contrastive_fwd"]
    got = _value_and_grads(ClipLoss(local_loss, gather_with_grad, cache_labels=True, impl=impl))
    assert LAUNCHES["contrastive_fwd"] == before + (impl == "triton")  # the fused kernel really ran
    _assert_same(got, _value_and_grads(_openclip_loss), impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_compiles_as_one_graph(device, impl):
    torch._dynamo.reset()
    loss_fn = torch.compile(ClipLoss(impl=impl), fullgraph=True, backend="aot_eager")
    _assert_same(_value_and_grads(loss_fn), _value_and_grads(_openclip_loss), f"compiled {impl}")


def test_output_dict_and_float_logit_scale():
    image, text = _batch()
    out = ClipLoss()(image, text, 10.0, output_dict=True)
    assert list(out) == ["contrastive_loss"]
    torch.testing.assert_close(out["contrastive_loss"], _openclip_loss(image, text, 10.0))


@pytest.mark.parametrize("kwargs,message", [
    (dict(use_horovod=True), "use_horovod=True is not supported"),
    (dict(local_loss=True, world_size=2), "local_loss=True needs gather_with_grad=True"),
    (dict(rank=2, world_size=2), "need 0 <= rank < world_size"),
])
def test_unsupported_constructor_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClipLoss(**kwargs)


def test_bad_forward_arguments_are_refused():
    image, text = _batch()
    with pytest.raises(RuntimeError, match=r"ClipLoss\(world_size=2, rank=1\) needs an initialised .* found none"):
        ClipLoss(gather_with_grad=True, rank=1, world_size=2)(image, text, 10.0)
    with pytest.raises(ValueError, match=r"must both be \(B, D\)"):
        ClipLoss()(image[None], text[None], 10.0)
    with pytest.raises(ValueError, match="logit_scale must be finite and > 0"):
        ClipLoss()(image, text, torch.tensor(0.0))


# --- 2 gloo ranks ----------------------------------------------------------------------------------------------------

def _in_group(rank, port, out_dir):
    """Spawned rank, inside the trainer's `process_group` (gloo, env:// rendezvous; clean teardown)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    with process_group("cpu"):
        rows = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        results = {}
        for i, mode in enumerate(MODES):
            results[i, "openclip"] = _value_and_grads(
                lambda im, tx, s: _openclip_loss(im, tx, s, rank=rank, world_size=WORLD, **mode), rows)
            for impl in IMPLS:
                loss = ClipLoss(**mode, rank=rank, world_size=WORLD, impl=impl)
                results[i, impl] = _value_and_grads(loss, rows)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_match_openclip(device, tmp_path):
    mp.spawn(_in_group, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]
    for i, mode in enumerate(MODES):
        for rank, results in enumerate(ranks):
            for impl in IMPLS:
                _assert_same(results[i, impl], results[i, "openclip"], f"{mode} {impl} rank {rank}")
    # local_loss + gather_with_grad against the formula on the global batch, in one process: the mean of the
    # rank losses is the global loss; each rank's feature gradient is W x the global one of its rows, and the
    # rank mean of the logit_scale gradients (what DDP's average gives) is the global one
    want_loss, (want_image, want_text, want_scale) = _value_and_grads(_openclip_loss)
    i = MODES.index(dict(local_loss=True, gather_with_grad=True))
    for impl in IMPLS:
        losses = torch.stack([results[i, impl][0] for results in ranks])
        torch.testing.assert_close(losses.mean(), want_loss, atol=1e-5, rtol=1e-5)
        for rank, results in enumerate(ranks):
            rows = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
            image_grad, text_grad, _ = results[i, impl][1]
            torch.testing.assert_close(image_grad / WORLD, want_image[rows], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(text_grad / WORLD, want_text[rows], atol=1e-5, rtol=1e-5)
        scale_grad = torch.stack([results[i, impl][1][2] for results in ranks]).mean()
        torch.testing.assert_close(scale_grad, want_scale, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_one_process_on_cuda_matches_openclip():
    """impl="auto" on CUDA runs the fused kernel and gives OpenCLIP's value and gradients."""
    image, text = (t.cuda().requires_grad_() for t in _batch())
    log_scale = torch.tensor(2.0, device="cuda", requires_grad=True)
    before = LAUNCHES["contrastive_fwd"]
    loss = ClipLoss()(image, text, log_scale.exp())
    assert LAUNCHES["contrastive_fwd"] == before + 1
    grads = torch.autograd.grad(loss, [image, text, log_scale])
    want = _openclip_loss(image, text, log_scale.exp())
    want_grads = torch.autograd.grad(want, [image, text, log_scale])
    _assert_same((loss, grads), (want, want_grads), "cuda")
