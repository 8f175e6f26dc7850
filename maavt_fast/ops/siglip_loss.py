"""Drop-in replacement for OpenCLIP's `SigLipLoss` on the fused sigmoid loss.

Same constructor and forward, same value and gradients: image_features (B, D) are the rows, text_features
(B, D) the columns, both already normalised by the model (no normalisation here); `logit_scale` is the
multiplier (OpenCLIP passes `logit_scale.exp()`), `logit_bias` a scalar or None. Each rank's loss is
-sum over its B image rows and all W*B texts of log sigmoid(y z) / B, as OpenCLIP's neighbour exchange
computes it; here the texts of all ranks arrive in one all-gather with autograd, whatever `dist_impl`.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from maavt_fast.ops import distributed
from maavt_fast.ops.sigmoid import sigmoid_loss_sums

DIST_IMPLS = ("bidir", "shift", "reduce", "gather")


class SigLipLoss(torch.nn.Module):
    """Sigmoid loss of Zhai et al. (SigLIP): forward(image (B, D), text (B, D), scale, bias) -> scalar loss.

    `cache_labels` and `dist_impl` are accepted for compatibility (no label matrix is built; every
    exchange strategy gives the same result). `impl` picks the implementation as in the fused ops.
    """

    def __init__(self, cache_labels: bool = False, rank: int = 0, world_size: int = 1, dist_impl: str | None = None,
                 impl: str = "auto"):
        super().__init__()
        if (dist_impl or "bidir") not in DIST_IMPLS:
            raise ValueError(f"dist_impl must be one of {DIST_IMPLS} or None; got {dist_impl!r}")
        self.cache_labels, self.rank, self.world_size = cache_labels, rank, world_size
        self.dist_impl, self.impl = dist_impl or "bidir", impl

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float,
                logit_bias: torch.Tensor | float | None = None, output_dict: bool = False
                ) -> torch.Tensor | dict[str, torch.Tensor]:
        if image_features.dim() != 2 or image_features.shape != text_features.shape:
            raise ValueError(f"image_features and text_features must both be (B, D); "
                             f"got {tuple(image_features.shape)} and {tuple(text_features.shape)}")
        for name, value in (("logit_scale", logit_scale), ("logit_bias", logit_bias)):
            if isinstance(value, torch.Tensor) and value.numel() != 1:
                raise ValueError(f"{name} must hold one value; got shape {tuple(value.shape)}")
        B = image_features.shape[0]
        texts, rows = text_features.unsqueeze(0), image_features.unsqueeze(0)
        keep = torch.ones(B, dtype=torch.bool, device=image_features.device)
        row_start = 0
        if self.world_size > 1:
            if not distributed.multi_rank() or (dist.get_world_size(), dist.get_rank()) != (self.world_size,
                                                                                                self.rank):
                raise RuntimeError(f"SigLipLoss(rank={self.rank}, world_size={self.world_size}) needs an "
                                   "initialised process group of that size in which this process has that rank")
            texts, keep, row_start = distributed.gather_columns(texts, keep)
        bias = 0.0 if logit_bias is None else logit_bias
        loss = sigmoid_loss_sums(texts, rows, keep, logit_scale, bias, False, row_start, self.impl)[0] / B
        return {"contrastive_loss": loss} if output_dict else loss
