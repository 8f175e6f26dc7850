"""`ClipLoss`: a drop-in for OpenCLIP's `ClipLoss`, on the fused contrastive op.

OpenCLIP's loss (features already normalised, `logit_scale` a multiplier), per rank, with
`logits = logit_scale * image @ text.T` and the mean of the image->text and text->image cross-entropies:
- world_size 1: over the B local rows;
- world_size W > 1, local_loss=False: over all W*B gathered rows (every rank computes the global loss);
  gather_with_grad=True gathers with autograd (each rank's feature gradient is then W x the global one),
  False gathers without it and only the rank's own slice carries gradients;
- local_loss=True with gather_with_grad=True: the B local rows against all W*B columns.
Same value and gradients here; with the Triton kernel (CUDA, or `impl="triton"`) the logits are never
stored. local_loss=True without gather_with_grad (gradients through one side of the logits only) and
Horovod are refused: the fused op cannot compute them exactly.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from maavt_fast.ops import distributed
from maavt_fast.ops._arguments import as_blocks, temperature_of
from maavt_fast.ops.contrastive import blockwise_contrastive_loss, rows_loss


class ClipLoss(torch.nn.Module):
    """OpenCLIP's `ClipLoss(local_loss, gather_with_grad, cache_labels, rank, world_size, use_horovod)`;
    forward `(image (B, D), text (B, D), logit_scale)` -> loss, or `{"contrastive_loss": loss}`.

    `cache_labels` is accepted and has no effect (no label tensor is built). With world_size > 1,
    `rank` and `world_size` must be those of the initialised default process group. `impl` as in
    `blockwise_contrastive_loss`.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False, cache_labels: bool = False,
                 rank: int = 0, world_size: int = 1, use_horovod: bool = False, impl: str = "auto"):
        super().__init__()
        if use_horovod:
            raise ValueError("ClipLoss: use_horovod=True is not supported; run under torch.distributed "
                             "(e.g. torchrun) instead")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"ClipLoss: need 0 <= rank < world_size; got rank={rank}, world_size={world_size}")
        if world_size > 1 and local_loss and not gather_with_grad:
            raise ValueError("ClipLoss: local_loss=True needs gather_with_grad=True here (OpenCLIP's gradient "
                             "without it, through one side of the logits only, is not what the fused op computes)")
        self.local_loss, self.gather_with_grad, self.cache_labels = local_loss, gather_with_grad, cache_labels
        self.rank, self.world_size, self.impl = rank, world_size, impl

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: float | torch.Tensor, output_dict: bool = False
                ) -> torch.Tensor | dict[str, torch.Tensor]:
        if image_features.dim() != 2 or image_features.shape != text_features.shape:
            raise ValueError(f"ClipLoss: image and text features must both be (B, D); "
                             f"got {tuple(image_features.shape)} and {tuple(text_features.shape)}")
        if self.world_size == 1:
            loss = blockwise_contrastive_loss(text_features, image_features, logit_scale=logit_scale,
                                              normalize=False, impl=self.impl)
        else:
            loss = self._gathered_loss(image_features, text_features, logit_scale)
        return {"contrastive_loss": loss} if output_dict else loss

    def _gathered_loss(self, image: torch.Tensor, text: torch.Tensor, logit_scale: float | torch.Tensor
                       ) -> torch.Tensor:
        self._check_process_group()
        temperature = temperature_of(None, logit_scale)
        text, image, _ = as_blocks(text, image)  # (1, B, D): one block, rows of `visual` = image
        B, W = text.shape[1], self.world_size
        keep = torch.ones(B, dtype=torch.bool, device=text.device)
        if self.gather_with_grad:
            all_text, all_image, all_keep, row_start = distributed.gather_features(text, image, keep)
        else:  # gathered without autograd; this rank's own slice is the live tensor
            all_text, all_image, all_keep, row_start = distributed.gather_features(text.detach(), image.detach(),
                                                                                   keep)
            all_text, all_image = (torch.cat([g[:, :row_start], own, g[:, row_start + B:]], dim=1)
                                   for g, own in ((all_text, text), (all_image, image)))
        if self.local_loss:  # the share is divided by the W*B rows: x W gives the mean over the B local rows
            return rows_loss(all_text, all_image, all_keep, temperature, False, self.impl, row_start, B)[0] * W
        return rows_loss(all_text, all_image, all_keep, temperature, False, self.impl, 0, W * B)[0]

    def _check_process_group(self) -> None:
        live = dist.is_available() and dist.is_initialized()
        found = (dist.get_world_size(), dist.get_rank()) if live else None
        if found != (self.world_size, self.rank):
            raise RuntimeError(f"ClipLoss(world_size={self.world_size}, rank={self.rank}) needs an initialised "
                               f"torch.distributed default group of that size and rank; found "
                               f"{'none' if found is None else f'world_size={found[0]}, rank={found[1]}'}")

    def extra_repr(self) -> str:
        return (f"local_loss={self.local_loss}, gather_with_grad={self.gather_with_grad}, rank={self.rank}, "
                f"world_size={self.world_size}, impl={self.impl!r}")
