"""The official release's order of computation for attention, the LSA and the contrastive loss.

One implementation each, shared by the release-order oracle (`maavt_fast.model.reference`), the math
attention backend of the fast path, the ops' readable references and the benchmarks' "release" rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ / sqrt(hd)) v with the full matrix: q, k, v `(..., n, hd)` -> output `(..., n, hd)` and the
    scaled logits before the softmax `(..., n, n)`."""
    logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    return logits.softmax(dim=-1) @ v, logits


def release_self_attention(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor,
                           proj_weight: torch.Tensor, proj_bias: torch.Tensor, num_heads: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """One attention module (timm's, or an LSA) over `x (N, n, D)` as the release runs it: qkv Linear, explicit
    attention, proj Linear -> output `(N, n, D)` and the scaled logits `(N, H, n, n)`. No norm, no residual."""
    N, n, D = x.shape
    q, k, v = F.linear(x, qkv_weight, qkv_bias).reshape(N, n, 3, num_heads, D // num_heads).permute(2, 0, 3, 1, 4)
    o, logits = explicit_attention(q, k, v)
    return F.linear(o.transpose(1, 2).reshape(N, n, D), proj_weight, proj_bias), logits


def release_group_attention(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor,
                            proj_weight: torch.Tensor, proj_bias: torch.Tensor, num_heads: int) -> torch.Tensor:
    """G separate attention modules one after the other (the release's LSAs), in `group_attention`'s shapes:
    x `(G, M, n, D)`, stacked weights `(G, 3D, D)`, `(G, 3D)`, `(G, D, D)`, `(G, D)` -> `(G, M, n, D)`."""
    return torch.stack([release_self_attention(x[g], qkv_weight[g], qkv_bias[g], proj_weight[g], proj_bias[g],
                                               num_heads)[0] for g in range(x.shape[0])])


def release_block_contrastive(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor,
                              temperature: float) -> torch.Tensor:
    """One block's loss as the release computes it: features `(B, P)` each normalised, background rows dropped
    by boolean indexing, symmetric cross-entropy of `visual @ audio.T / temperature` (0 with no kept row)."""
    a, v = F.normalize(audio, dim=-1)[keep], F.normalize(visual, dim=-1)[keep]
    if a.shape[0] == 0:
        return audio.new_zeros((), dtype=torch.promote_types(audio.dtype, torch.float32))
    logits = (v @ a.T).to(torch.promote_types(a.dtype, torch.float32)) / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def release_contrastive_loss(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor,
                             temperature: float = 0.07) -> torch.Tensor:
    """The release's Python loop over blocks: `(L, B, P)` x2, keep `(B,)` -> the mean of the L block losses."""
    return sum(release_block_contrastive(a, v, keep, temperature) for a, v in zip(audio, visual)) / audio.shape[0]
