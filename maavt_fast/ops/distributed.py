"""Cross-rank pieces of the blockwise contrastive loss (local-loss formulation).

Each rank keeps its own B rows and scores them against the columns of all W ranks (W * B). The
stacked (L, B, P) features of both modalities are all-gathered once, with autograd (the backward
sums the column gradients of every rank back onto their owner). The loss a rank differentiates is
W times its local share, so that DistributedDataParallel's gradient average gives the gradient of the
full-batch loss; its value is the full-batch loss itself (local shares summed over ranks).
Losses whose rows use one modality only (the sigmoid loss) gather just the columns (`gather_columns`).
Every rank must hold the same number of rows B.

The all-gather is the functional one (`torch.distributed._functional_collectives`), which Dynamo traces
into the graph (fullgraph=True works) with its registered autograd (backward = reduce-scatter sum);
`torch.distributed.nn.functional.all_gather` raises under torch.compile.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

# torch >= 2.14 names it all_gather_single_autograd (all_gather_tensor_autograd then warns in eager)
_all_gather = getattr(funcol, "all_gather_single_autograd", None) or funcol.all_gather_tensor_autograd


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient (torch 2.11's all-gather backward needs one)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def multi_rank(group: dist.ProcessGroup | None = None) -> bool:
    """True when torch.distributed is running and `group` (None: the default group) has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _gather_blocks(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """(N, B, ...) -> (N, W*B, ...) of all ranks, rank-major along dim 1, with autograd."""
    W = dist.get_world_size(group)
    stacked = _ContiguousGrad.apply(_all_gather(x.contiguous(), 0, group or dist.group.WORLD))  # (W*N, B, ...)
    return stacked.view(W, *x.shape).transpose(0, 1).reshape(x.shape[0], W * x.shape[1], *x.shape[2:])


def _gather_keep(keep: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    return _all_gather(keep.to(torch.uint8), 0, group or dist.group.WORLD).bool()  # (W*B,)


def gather_features(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor,
                    group: dist.ProcessGroup | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(L, B, P) x2 and keep (B,) -> global (L, W*B, P) x2 (with autograd), keep (W*B,), this rank's first row."""
    L, B, _ = audio.shape
    features = _gather_blocks(torch.cat([audio, visual]), group)  # one collective for both
    return features[:L], features[L:], _gather_keep(keep, group), dist.get_rank(group) * B


def gather_columns(audio: torch.Tensor, keep: torch.Tensor, group: dist.ProcessGroup | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(L, B, P) and keep (B,) -> all ranks' (L, W*B, P) (with autograd), keep (W*B,), this rank's first row."""
    return _gather_blocks(audio, group), _gather_keep(keep, group), dist.get_rank(group) * audio.shape[1]


def global_loss(local: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Local share (L,) -> full-batch value (L,) whose gradient is W x the local one (see module doc)."""
    total = local.detach().clone()
    dist.all_reduce(total, group=group)  # Dynamo traces it as the functional all_reduce
    scaled = local * dist.get_world_size(group)
    return scaled + (total - scaled.detach())


def mean_over_ranks(count: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """The mean of a per-rank count over the ranks of `group` (no gradient); the count itself on one rank."""
    if not multi_rank(group):
        return count
    total = count.detach().to(torch.float64)
    dist.all_reduce(total, group=group)
    return total / dist.get_world_size(group)
