"""gather=True across 2 gloo ranks on CPU equals one process on the concatenated batch, after DDP.

Each rank projects its half of the batch with a DistributedDataParallel-wrapped module (blockwise
projections + learnable temperature) and calls the loss with gather=True; DDP averages the gradients.
Loss and parameter gradients must equal the single-process run on the full batch, background rows
included. The Triton path is checked too (TRITON_INTERPRET=1 is inherited by the spawned ranks).
"""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from maavt_fast.ops import blockwise_contrastive_loss, blockwise_projection
from maavt_fast.ops._dispatch import kernel_device
from maavt_fast.train.distributed import process_group

WORLD = 2
L, B_LOCAL, D, P = 3, 4, 12, 10


class _Heads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w_a, self.w_v = (torch.nn.Parameter(torch.randn(L, P, D, generator=g)) for _ in range(2))
        self.b_a, self.b_v = (torch.nn.Parameter(torch.randn(L, P, generator=g)) for _ in range(2))
        self.temperature = torch.nn.Parameter(torch.tensor(0.1))

    def forward(self, xa, xv, keep, impl, gather, group=None):
        audio, visual = blockwise_projection(xa, self.w_a, self.b_a), blockwise_projection(xv, self.w_v, self.b_v)
        return blockwise_contrastive_loss(audio, visual, keep, self.temperature, reduction="none", impl=impl,
                                          gather=gather, group=group)


def _batch():
    g = torch.Generator().manual_seed(1)
    keep = torch.tensor([True, False, True, True, True, True, False, True])  # background rows on both ranks
    return torch.randn(L, WORLD * B_LOCAL, D, generator=g), torch.randn(L, WORLD * B_LOCAL, D, generator=g), keep


def _step(module, impl, rows=slice(None), gather=False, group=None):
    xa, xv, keep = _batch()
    losses = module(xa[:, rows], xv[:, rows], keep[rows], impl, gather, group)
    losses.mean().backward()
    inner = module.module if isinstance(module, DistributedDataParallel) else module
    return losses.detach(), {name: p.grad.clone() for name, p in inner.named_parameters()}


def _in_group(rank, port, work, *args):
    """Spawned rank: `work(rank, *args)` inside the trainer's `process_group` (gloo, env:// rendezvous), which
    tears the group down cleanly once `work`'s frame, and any DDP wrapper in it, is gone."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    with process_group("cpu"):
        work(rank, *args)


def _rank(rank, impls, out_dir):
    results = {}
    for impl in impls:
        model = DistributedDataParallel(_Heads())
        results[impl] = _step(model, impl, slice(rank * B_LOCAL, (rank + 1) * B_LOCAL), gather=True)
    rows = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    group = dist.new_group([0, 1])  # an explicit group object, not the default one
    results["group"] = _step(DistributedDataParallel(_Heads(), process_group=group), "torch", rows, True, group)
    alone, _ = dist.new_subgroups(group_size=1)  # a one-rank group: gather=True must then change nothing
    results["alone"] = _step(DistributedDataParallel(_Heads(), process_group=alone), "torch", rows, True, alone)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gather_matches_single_process(tmp_path):
    if kernel_device() is None:
        pytest.fail("Triton kernels cannot run: no CUDA device and TRITON_INTERPRET=1 was not set before import")
    impls = ("torch", "triton")
    mp.spawn(_in_group, args=(_free_port(), _rank, impls, str(tmp_path)), nprocs=WORLD, join=True)
    for impl in (*impls, "group"):
        want_loss, want_grads = _step(_Heads(), "torch")
        for rank in range(WORLD):
            loss, grads = torch.load(tmp_path / f"rank{rank}.pt")[impl]
            torch.testing.assert_close(loss, want_loss, atol=1e-5, rtol=1e-5)
            for name, grad in grads.items():
                torch.testing.assert_close(grad, want_grads[name], atol=1e-5, rtol=1e-5, msg=f"{impl} {name}")
    for rank in range(WORLD):  # with its own one-rank group, a rank's loss is that of its rows alone
        loss, grads = torch.load(tmp_path / f"rank{rank}.pt")["alone"]
        want_loss, want_grads = _step(_Heads(), "torch", slice(rank * B_LOCAL, (rank + 1) * B_LOCAL))
        torch.testing.assert_close(loss, want_loss, atol=1e-5, rtol=1e-5)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, want_grads[name], atol=1e-5, rtol=1e-5, msg=f"alone {name}")


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_gather_without_process_group_is_a_no_op(impl):
    if impl == "triton" and kernel_device() is None:
        pytest.fail("Triton kernels cannot run: no CUDA device and TRITON_INTERPRET=1 was not set before import")
    assert not dist.is_initialized()
    torch.testing.assert_close(_step(_Heads(), impl, gather=True), _step(_Heads(), impl, gather=False))


# --- gather=True inside torch.compile(fullgraph=True) -------------------------------------------------------------
# The trainer compiles the whole step under DDP, so the all-gather (with its autograd) and the all-reduce of the
# loss value must trace into the graph: they are functional collectives, so there is no graph break.

def _features():
    xa, xv, keep = _batch()  # (L, W*B_LOCAL, D) used directly as the features
    temperature = torch.tensor([0.1, 0.07, 0.2])  # per-block (L,) and learnable
    weights = torch.tensor([0.5, 1.0, 2.0])  # a different gradient for every block loss
    return xa, xv, keep, temperature, weights


def _contrastive(audio, visual, keep, temperature, impl, gather):
    return blockwise_contrastive_loss(audio, visual, keep, temperature, reduction="none", impl=impl, gather=gather)


def _loss_and_grads(fn, impl, rows=slice(None), gather=False):
    xa, xv, keep, temperature, weights = _features()
    leaves = [xa[:, rows].clone().requires_grad_(), xv[:, rows].clone().requires_grad_(),
              temperature.requires_grad_()]
    losses = fn(*leaves[:2], keep[rows], leaves[2], impl, gather)
    (losses * weights).sum().backward()
    return losses.detach(), [t.grad for t in leaves]


def _compiled_rank(rank, impls, out_dir):
    from torch._dynamo.testing import CompileCounterWithBackend

    results = {}
    for impl in impls:
        torch._dynamo.reset()
        counter = CompileCounterWithBackend("inductor")  # the trainer's backend
        fn = torch.compile(_contrastive, fullgraph=True, backend=counter)
        results[impl] = _loss_and_grads(fn, impl, slice(rank * B_LOCAL, (rank + 1) * B_LOCAL), gather=True)
        results[impl + ":graphs"] = counter.frame_count
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


def test_gather_under_compile_fullgraph_matches_single_process(tmp_path):
    """Loss and the gradients of both ranks' features and of the temperature equal the eager full-batch ones.

    Rank r differentiates W x its local share and the all-gather backward sums every rank's column gradients
    onto their owner, so rank r's feature gradient is W x the full-batch gradient of its rows; its temperature
    gradient is W x its local share's, so the rank mean (what DDP's average gives) is the full-batch gradient.
    """
    if kernel_device() is None:
        pytest.fail("Triton kernels cannot run: no CUDA device and TRITON_INTERPRET=1 was not set before import")
    impls = ("torch", "triton")
    mp.spawn(_in_group, args=(_free_port(), _compiled_rank, impls, str(tmp_path)), nprocs=WORLD, join=True)
    want_loss, (want_a, want_v, want_t) = _loss_and_grads(_contrastive, "torch")
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]
    for impl in impls:
        for rank, results in enumerate(ranks):
            assert results[impl + ":graphs"] == 1, f"{impl}: the compiled loss was not one graph"
            loss, (grad_a, grad_v, _) = results[impl]
            rows = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
            torch.testing.assert_close(loss, want_loss, atol=1e-5, rtol=1e-5, msg=f"{impl} rank {rank} loss")
            torch.testing.assert_close(grad_a / WORLD, want_a[:, rows], atol=1e-5, rtol=1e-5,
                                       msg=f"{impl} rank {rank} audio")
            torch.testing.assert_close(grad_v / WORLD, want_v[:, rows], atol=1e-5, rtol=1e-5,
                                       msg=f"{impl} rank {rank} visual")
        grad_t = torch.stack([results[impl][1][2] for results in ranks]).mean(0)
        torch.testing.assert_close(grad_t, want_t, atol=1e-5, rtol=1e-5, msg=f"{impl} temperature")
