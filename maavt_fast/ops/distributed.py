"""Cross-rank pieces of the blockwise contrastive loss (local-loss formulation).

Each rank keeps its own B rows and scores them against the columns of all W ranks (W * B). The
stacked (L, B, P) features of both modalities are all-gathered once, with autograd (the backward
sums the column gradients of every rank back onto their owner). The loss a rank differentiates is
W times its local share, so that DistributedDataParallel's gradient average gives the gradient of the
full-batch loss; its value is the full-batch loss itself (local shares summed over ranks).
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


def multi_rank(group: dist.ProcessGroup | None = None) -> bool:
    """True when torch.distributed is running and `group` (None: the default group) has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def gather_features(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor,
                    group: dist.ProcessGroup | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(L, B, P) x2 and keep (B,) -> global (L, W*B, P) x2 (with autograd), keep (W*B,), this rank's first row,
    over the W ranks of `group` (None: the default group)."""
    L, B, P = audio.shape
    group = dist.group.WORLD if group is None else group
    W = dist.get_world_size(group)
    stacked = _all_gather(torch.cat([audio, visual]), 0, group)  # (W*2L, B, P), rank-major
    features = stacked.view(W, 2 * L, B, P).transpose(0, 1).reshape(2 * L, W * B, P)
    keep_all = _all_gather(keep.to(torch.uint8), 0, group).bool()  # (W*B,)
    return features[:L], features[L:], keep_all, dist.get_rank(group) * B


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
