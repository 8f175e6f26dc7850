"""Gradient accumulation that is exact for the contrastive loss (the gradient-cache technique).

Splitting a batch into micro-batches and adding their gradients changes the contrastive loss: each
micro-batch would score its rows against its own few negatives. Instead, one optimizer step over a
local batch of B clips in `k` micro-batches of B/k clips runs:

1. a forward without gradients of every micro-batch (the raw model, no activations kept), collecting the
   logits and the projected contrastive features `(L, B/k * T, P)` x2;
2. the loss of the whole batch on the concatenated outputs (`MAAVTLoss`, so under torchrun the
   contrastive loss gathers the features of all ranks): the logged losses, and the gradient of the
   contrastive loss w.r.t. the features;
3. per micro-batch, a forward with gradients and the backward of its share of the FG and BG losses
   (normalised by the whole batch's FG count and row count) plus `sum(features * feature_gradient)`,
   which back-propagates the contrastive gradient through the micro-batch's activations. Under
   DistributedDataParallel only the last micro-batch's backward averages the gradients over the ranks;
4. OGM-GE (coefficients from the whole batch's modality logits, noise drawn once), clipping and the
   optimizer step on the accumulated gradients, as `TrainStep` does for one batch.

The gradients therefore equal those of the whole batch up to float rounding, for the cost of one extra
forward. The model has no dropout or other random layers, so the two forwards see the same function;
the only random draw, the OGM-GE noise, happens once per step from its (seed, step) generator.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from maavt_fast.model.loss import upcast
from maavt_fast.model.outputs import MAAVTOutput
from maavt_fast.train.step import TrainStep


class AccumulatingTrainStep(TrainStep):
    """`TrainStep` whose batch (B clips per rank) is run as `accum_steps` micro-batches of B / accum_steps clips,
    with the gradients of the whole batch. With `compile`, the micro-batch forward, the micro-batch
    forward+backward and the gradient application are compiled; the loop over micro-batches stays eager."""

    def __init__(self, model: torch.nn.Module, raw_model, optimizer: torch.optim.Optimizer, precision,
                 device: torch.device, accum_steps: int, compile: bool = True, **kwargs):
        if accum_steps < 2:
            raise ValueError(f"accum_steps must be >= 2 (1: use TrainStep), got {accum_steps}")
        super().__init__(model, raw_model, optimizer, precision, device, compile=False, **kwargs)
        self.raw_model, self.accum_steps = raw_model, accum_steps
        wrap = torch.compile if compile else (lambda fn: fn)
        self._features, self._micro_backward, self._apply = (
            wrap(self._features_fn), wrap(self._micro_backward_fn), wrap(self.apply_gradients))

    def _step(self, audio: torch.Tensor, image: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        k = self.accum_steps
        if audio.shape[0] % k:
            raise ValueError(f"a batch of {audio.shape[0]} clips does not split into train.accum_steps={k} "
                             f"equal micro-batches")
        micro = list(zip(audio.chunk(k), image.chunk(k), label.chunk(k)))
        out = _concat([self._features(a, i) for a, i, _ in micro])
        feature_grads = self._whole_batch_loss(out, label)
        normaliser, rows = self.loss_fn.fg_normaliser(label), label.numel()
        for m, (a, i, y) in enumerate(micro):
            grads = None if feature_grads is None else tuple(g.chunk(k, dim=1)[m] for g in feature_grads)
            with self._no_sync(last=m == k - 1):
                self._micro_backward(a, i, y, normaliser, rows, grads)
        return self._apply(out, label)

    def _features_fn(self, audio: torch.Tensor, image: torch.Tensor) -> tuple:
        """The model's outputs without gradients (no activations kept): fg, bg, modality logits, features."""
        with torch.no_grad(), self.precision.autocast(self.device):
            out = self.raw_model(audio, image)
        return out.fg_logits, out.bg_logits, out.modality_logits, out.contrastive_features

    def _whole_batch_loss(self, out: MAAVTOutput, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Sets the whole batch's losses on `out`; returns d loss_contrastive / d features (None when it is off)."""
        features = out.contrastive_features
        if features is not None:
            out.contrastive_features = tuple(f.detach().requires_grad_() for f in features)
        with torch.enable_grad(), self.precision.autocast(self.device):
            self.loss_fn(out, label)
        if features is None:
            return None
        return torch.autograd.grad(out.loss_contrastive, out.contrastive_features)

    def _micro_backward_fn(self, audio: torch.Tensor, image: torch.Tensor, label: torch.Tensor,
                           fg_normaliser: torch.Tensor, batch_rows: int,
                           feature_grads: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Forward with gradients, backward of the FG/BG shares plus the contrastive gradient via the features."""
        with self.precision.autocast(self.device):
            out = self.loss_fn.classification_share(self.model(audio, image), label, fg_normaliser, batch_rows)
        surrogate = out.loss
        if feature_grads is not None:
            for f, g in zip(out.contrastive_features, feature_grads):
                surrogate = surrogate + (upcast(f) * upcast(g)).sum()
        surrogate.backward()

    def _no_sync(self, last: bool):
        """DistributedDataParallel averages the gradients over the ranks only in the last micro-batch's backward."""
        return nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()


def _concat(parts: list[tuple]) -> MAAVTOutput:
    """The micro-batches' (fg, bg, modality, features) outputs joined along their rows into one MAAVTOutput."""
    fg, bg, modality, features = zip(*parts)

    def rows(tensors, dim=0):
        return None if tensors[0] is None else torch.cat(tensors, dim=dim)

    def pairs(items, dim):
        return None if items[0] is None else tuple(rows([p[j] for p in items], dim) for j in range(2))

    return MAAVTOutput(fg_logits=rows(fg), bg_logits=rows(bg), modality_logits=pairs(modality, 0),
                       contrastive_features=pairs(features, 1))
