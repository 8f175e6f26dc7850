"""Cross-rank pieces of the blockwise contrastive loss (local-loss formulation).

Each rank keeps its own B rows and scores them against the columns of all W ranks (W * B). The
stacked (L, B, P) features of both modalities are all-gathered once, with autograd (the backward
sums the column gradients of every rank back onto their owner). The loss a rank differentiates is
W times its local share, so that DistributedDataParallel's gradient average gives the gradient of the
full-batch loss; its value is the full-batch loss itself (local shares summed over ranks).
Every rank must hold the same number of rows B.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def gather_active() -> bool:
    """True when a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_features(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(L, B, P) x2 and keep (B,) -> global (L, W*B, P) x2 (with autograd), keep (W*B,), this rank's first row."""
    L = audio.shape[0]
    parts = dist_fn.all_gather(torch.cat([audio, visual]))  # W tensors (2L, B, P)
    features = torch.cat(parts, dim=1)
    keep_parts = [torch.empty_like(keep, dtype=torch.uint8) for _ in parts]
    dist.all_gather(keep_parts, keep.to(torch.uint8))
    return features[:L], features[L:], torch.cat(keep_parts).bool(), dist.get_rank() * audio.shape[1]


def global_loss(local: torch.Tensor) -> torch.Tensor:
    """Local share (L,) -> full-batch value (L,) whose gradient is W x the local one (see module doc)."""
    total = local.detach().clone()
    dist.all_reduce(total)
    scaled = local * dist.get_world_size()
    return scaled + (total - scaled.detach())
