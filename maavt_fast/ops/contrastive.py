"""Blockwise contrastive loss (spec §4) over stacked per-block features.

Shapes: audio, visual `(L, B, P)` (L blocks, B rows, P features); keep `(B,)` bool (False = background
row, excluded from both sides). Value per block: symmetric InfoNCE of `visual @ audio.T / temperature`
over the kept rows; `reduction="mean"` averages the L block losses, `"none"` returns them `(L,)`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def blockwise_projection(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-block Linear for all blocks in one batched matmul: `(L, B, D) x (L, P, D) + (L, P) -> (L, B, P)`."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def blockwise_contrastive_loss_reference(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor | None = None,
                                         temperature: float | torch.Tensor = 0.07, normalize: bool = True,
                                         reduction: str = "mean") -> torch.Tensor:
    """Readable PyTorch reference: per-block `(L,)` losses, in fp32, from masked `(L, B, B)` logits."""
    a, v = audio.float(), visual.float()
    if normalize:
        a, v = F.normalize(a, dim=-1), F.normalize(v, dim=-1)
    L, B, _ = a.shape
    if keep is None:
        keep = torch.ones(B, dtype=torch.bool, device=a.device)
    logits = torch.bmm(v, a.transpose(1, 2)) / temperature  # (L, B, B): rows visual, columns audio
    pair_ok = keep[:, None] & keep[None, :]
    masked = logits.masked_fill(~pair_ok, float("-inf"))
    diag = torch.diagonal(logits, dim1=1, dim2=2)  # (L, B)
    # log-sum-exp over kept columns (v->a) and kept rows (a->v); rows that are not kept give -inf -> zeroed
    lse_v2a = torch.logsumexp(masked, dim=2)
    lse_a2v = torch.logsumexp(masked, dim=1)
    per_row = torch.where(keep, 0.5 * (lse_v2a + lse_a2v) - diag, torch.zeros_like(diag))
    n_keep = keep.sum().clamp(min=1)
    per_block = per_row.sum(dim=1) / n_keep
    return _reduce(per_block, reduction)


def _reduce(per_block: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_block.mean()
    if reduction == "none":
        return per_block
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _check_inputs(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor | None) -> None:
    if audio.dim() != 3 or audio.shape != visual.shape:
        raise ValueError(f"audio and visual must both be (L, B, P); got {tuple(audio.shape)} and {tuple(visual.shape)}")
    if keep is not None and (keep.shape != (audio.shape[1],) or keep.dtype != torch.bool):
        raise ValueError(f"keep must be a bool tensor of shape ({audio.shape[1]},); got {keep.dtype} {tuple(keep.shape)}")


def blockwise_contrastive_loss(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor | None = None,
                               temperature: float | torch.Tensor = 0.07, normalize: bool = True,
                               reduction: str = "mean", impl: str = "auto") -> torch.Tensor:
    """Functional API; `impl` is "auto" (Triton on CUDA, reference on CPU), "torch" or "triton"."""
    _check_inputs(audio, visual, keep)
    return blockwise_contrastive_loss_reference(audio, visual, keep, temperature, normalize, reduction)


class BlockwiseContrastiveLoss(torch.nn.Module):
    """Module wrapper of `blockwise_contrastive_loss` with a fixed temperature."""

    def __init__(self, temperature: float = 0.07, normalize: bool = True, reduction: str = "mean"):
        super().__init__()
        self.temperature, self.normalize, self.reduction = temperature, normalize, reduction

    def forward(self, audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        return blockwise_contrastive_loss(audio, visual, keep, self.temperature, self.normalize, self.reduction)
