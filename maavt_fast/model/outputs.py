"""The model's typed output."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MAAVTOutput:
    """Per-sample rows are the flattened `N = B*T` clips/segments.

    fg_logits `(N, C)`; bg_logits `(N,)` (None without the BG token); modality_logits: (audio, visual)
    `(N, C)` each, from the FG classifier halves (for gradient modulation); attn `(N, S/p, S/p)` (p: the
    patch size) the last block's CLS-row map over the patches when asked for; contrastive_features: the projected
    shared-token features (audio, visual) `(L, N, P)` each, L = the blocks the contrastive loss covers
    (None when it is off); contrastive_scale_bias: the sigmoid loss's (logit_scale, logit_bias) `(L,)` each
    (None unless `model.contrastive_loss="sigmoid"`); losses are 0-dim (None without labels, or when the term
    is off).
    """

    fg_logits: torch.Tensor
    bg_logits: torch.Tensor | None = None
    modality_logits: tuple[torch.Tensor, torch.Tensor] | None = None
    attn: torch.Tensor | None = None
    contrastive_features: tuple[torch.Tensor, torch.Tensor] | None = None
    contrastive_scale_bias: tuple[torch.Tensor, torch.Tensor] | None = None
    loss: torch.Tensor | None = None
    loss_fg: torch.Tensor | None = None
    loss_bg: torch.Tensor | None = None
    loss_contrastive: torch.Tensor | None = None
