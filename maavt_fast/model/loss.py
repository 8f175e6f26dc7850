"""MA-AVT's training loss from the model's outputs, with the batch's distribution given at construction.

`MAAVTLoss(cfg, group)` adds up, for labels `(N,)` (BG_LABEL = background row):

- loss_fg: cross-entropy of the FG head over the foreground rows;
- loss_bg: binary cross-entropy of the BG head (target: the row is background), when the BG token is on;
- loss_contrastive: the blockwise contrastive loss of the projected shared-token features, background
  rows excluded, when `model.contrastive` is not "none": InfoNCE with `model.temperature`, or with
  `model.contrastive_loss="sigmoid"` the pairwise sigmoid loss with the output's learnable scale and bias.

With `group` (a process group of W > 1 ranks over which the global batch is split) the FG loss is
normalised by the mean FG-row count over the ranks and the contrastive loss scores the local rows
against the features of all ranks, so DistributedDataParallel's gradient average equals the
one-process gradient of the global batch, background rows included. Without a group the batch
given is the whole batch; the loss then calls no collective.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from maavt_fast.config import BG_LABEL, ModelConfig
from maavt_fast.model.outputs import MAAVTOutput
from maavt_fast.ops import blockwise_contrastive_loss, blockwise_sigmoid_loss
from maavt_fast.ops.distributed import mean_over_ranks, multi_rank


class MAAVTLoss:
    """Callable `(MAAVTOutput, label (N,) or (B, T)) -> the output with loss, loss_fg, loss_bg, loss_contrastive`
    set (0-dim; the terms that are off stay None)."""

    def __init__(self, cfg: ModelConfig, group: dist.ProcessGroup | None = None):
        self.temperature, self.sigmoid = cfg.temperature, cfg.contrastive_loss == "sigmoid"
        self.group = group if group is not None and multi_rank(group) else None

    def __call__(self, out: MAAVTOutput, label: torch.Tensor) -> MAAVTOutput:
        label = label.reshape(-1)
        if label.numel() != out.fg_logits.shape[0]:
            raise ValueError(f"label must hold one entry per row of fg_logits ({out.fg_logits.shape[0]}); "
                             f"got {tuple(label.shape)}")
        keep = label != BG_LABEL
        self._classification(out, label, keep, self.fg_normaliser(label))
        if out.contrastive_features is not None:
            out.loss_contrastive = self._contrastive(out, keep)
            out.loss = out.loss + out.loss_contrastive
        return out

    def _contrastive(self, out: MAAVTOutput, keep: torch.Tensor) -> torch.Tensor:
        audio, visual = out.contrastive_features
        gather = self.group is not None
        if not self.sigmoid:
            return blockwise_contrastive_loss(audio, visual, keep, self.temperature, gather=gather, group=self.group)
        if out.contrastive_scale_bias is None:
            raise ValueError("model.contrastive_loss='sigmoid' needs the output's contrastive_scale_bias: "
                             "the model was built with another contrastive_loss")
        scale, bias = out.contrastive_scale_bias
        return blockwise_sigmoid_loss(audio, visual, keep, scale, bias, gather=gather, group=self.group)

    def fg_normaliser(self, label: torch.Tensor) -> torch.Tensor:
        """What loss_fg divides by for labels `(N,)` or `(B, T)`: the FG-row count (with a group: its mean
        over the ranks), at least 1."""
        n_fg = (label.reshape(-1) != BG_LABEL).sum()
        return (n_fg if self.group is None else mean_over_ranks(n_fg, self.group)).clamp(min=1)

    def classification_share(self, out: MAAVTOutput, label: torch.Tensor, fg_normaliser: torch.Tensor,
                             batch_rows: int) -> MAAVTOutput:
        """A micro-batch's share of the FG and BG losses: `out` and `label` hold some of the `batch_rows` local
        rows of a batch whose `fg_normaliser` is given; the shares of all micro-batches add up to that batch's
        loss_fg and loss_bg. Sets loss_fg, loss_bg and loss (their sum); the contrastive term is not computed."""
        label = label.reshape(-1)
        self._classification(out, label, label != BG_LABEL, fg_normaliser, batch_rows)
        return out

    @staticmethod
    def _classification(out: MAAVTOutput, label: torch.Tensor, keep: torch.Tensor, fg_normaliser: torch.Tensor,
                        bg_rows: int | None = None) -> None:
        """Sets loss_fg, loss_bg and loss = their sum; the BCE is a mean over the rows (`bg_rows`: a sum / bg_rows)."""
        ce = F.cross_entropy(upcast(out.fg_logits), label.clamp(min=0), reduction="none")
        out.loss_fg = (ce * keep).sum() / fg_normaliser
        out.loss = out.loss_fg
        if out.bg_logits is not None:
            bg_logits = upcast(out.bg_logits)
            target = (~keep).to(bg_logits.dtype)
            if bg_rows is None:
                out.loss_bg = F.binary_cross_entropy_with_logits(bg_logits, target)
            else:
                out.loss_bg = F.binary_cross_entropy_with_logits(bg_logits, target, reduction="sum") / bg_rows
            out.loss = out.loss + out.loss_bg


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Losses run in at least fp32 (bf16/fp16 logits under autocast are upcast)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
