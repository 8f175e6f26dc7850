"""Blockwise contrastive loss (docs/model.md#blockwise-contrastive-loss) over stacked per-block features.

Shapes: audio, visual `(L, B, P)` (L blocks, B rows, P features), or `(B, P)` for one block (the result
is then that of `(1, B, P)` with the block axis squeezed); keep `(B,)` bool (False = background row,
excluded from both sides). Value per block: symmetric InfoNCE of `visual @ audio.T / temperature` over the
kept rows; `reduction="mean"` averages the L block losses, `"none"` returns them `(L,)`. The temperature
is a float or a tensor of shape `()` or `(L,)` (then it can be learnable); `logit_scale` (OpenCLIP's
multiplier, `1 / temperature`) can be given instead. The loss is computed in fp32 also under autocast.
`fp32_precision` ("ieee" | "tf32") sets the Triton kernels' dots for fp32 inputs; bf16/fp16 inputs always
use their own dtype on the tensor cores with fp32 accumulation (norms, log-sum-exp and loss in fp32).

Implementations: the readable reference below, and fused Triton kernels (`maavt_fast.kernels.contrastive`)
behind the `torch.library` custom ops `maavt::blockwise_contrastive_fwd/_bwd`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from maavt_fast.ops import distributed
from maavt_fast.ops._arguments import as_blocks, autocast_off, temperature_of
from maavt_fast.ops._dispatch import check_fp32_precision, load_kernels, unsupported_dtype, use_triton

_KERNELS = load_kernels("contrastive")


def blockwise_projection(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-block Linear for all blocks in one batched matmul: `(L, B, D) x (L, P, D) + (L, P) -> (L, B, P)`."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def blockwise_contrastive_loss_reference(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor | None = None,
                                         temperature: float | torch.Tensor = 0.07, normalize: bool = True,
                                         reduction: str = "mean", row_start: int = 0,
                                         row_count: int | None = None) -> torch.Tensor:
    """Readable PyTorch reference in fp32 (fp64 for fp64 inputs), from masked `(L, B, B)` logits.

    Only the loss rows `row_start : row_start + row_count` (default: all) are summed; the division is
    by the kept count of all B rows (that is the distributed local share of rank `row_start // B_local`).
    """
    dtype = torch.promote_types(audio.dtype, torch.float32)
    a, v = audio.to(dtype), visual.to(dtype)
    if normalize:
        a, v = F.normalize(a, dim=-1), F.normalize(v, dim=-1)
    L, B, _ = a.shape
    if keep is None:
        keep = torch.ones(B, dtype=torch.bool, device=a.device)
    temperature = torch.as_tensor(temperature, dtype=dtype, device=a.device)
    logits = torch.bmm(v, a.transpose(1, 2)) / temperature.reshape(-1, 1, 1)  # (L, B, B): rows visual, cols audio
    pair_ok = keep[:, None] & keep[None, :]
    masked = logits.masked_fill(~pair_ok, float("-inf"))
    # entries between two background rows -> 0: background rows get a finite, unused lse and no NaN gradient
    masked = masked.masked_fill(~keep[:, None] & ~keep[None, :], 0.0)
    diag = torch.diagonal(logits, dim1=1, dim2=2)  # (L, B)
    # log-sum-exp over kept columns (v->a) and kept rows (a->v); rows that are not kept give -inf -> zeroed
    lse_v2a = torch.logsumexp(masked, dim=2)
    lse_a2v = torch.logsumexp(masked, dim=1)
    per_row = torch.where(keep, 0.5 * (lse_v2a + lse_a2v) - diag, torch.zeros_like(diag))
    rows = slice(row_start, B if row_count is None else row_start + row_count)
    n_keep = keep.sum().clamp(min=1)
    per_block = per_row[:, rows].sum(dim=1) / n_keep
    return _reduce(per_block, reduction)


def _reduce(per_block: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_block.mean()
    if reduction == "none":
        return per_block
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _check_inputs(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor | None,
                  temperature: float | torch.Tensor, reduction: str) -> None:
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if audio.shape != visual.shape:
        raise ValueError(f"audio and visual must have one shape; got {tuple(audio.shape)} and {tuple(visual.shape)}")
    if keep is not None and (keep.shape != (audio.shape[1],) or keep.dtype != torch.bool):
        raise ValueError(f"keep must be a bool tensor of shape ({audio.shape[1]},); got {keep.dtype} {tuple(keep.shape)}")
    if keep is not None and keep.device != audio.device:
        raise ValueError(f"keep is on {keep.device} but the features are on {audio.device}")
    if isinstance(temperature, torch.Tensor) and temperature.numel() not in (1, audio.shape[0]):
        raise ValueError(f"temperature must be a float or a tensor of 1 or L={audio.shape[0]} values; "
                         f"got shape {tuple(temperature.shape)}")


def _temperature_tensor(temperature: float | torch.Tensor, blocks: int, device: torch.device) -> torch.Tensor:
    """fp32 temperature of shape () or (L,), keeping the autograd link of a tensor argument."""
    if not isinstance(temperature, torch.Tensor):
        return torch.full((), float(temperature), dtype=torch.float32, device=device)
    return temperature.float().reshape(() if temperature.numel() == 1 else (blocks,))


@torch.library.custom_op("maavt::blockwise_contrastive_fwd", mutates_args=())
def _fused_forward(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor, temperature: torch.Tensor,
                   row_start: int, row_count: int, normalize: bool, fp32_precision: str = "ieee"
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton forward -> (per-block losses (L,), lse v->a (L, row_count), lse a->v (L, row_count)), fp32."""
    sums, lse1, lse2 = _KERNELS.contrastive_forward(audio, visual, keep.view(torch.uint8), temperature,
                                                    row_start, row_count, normalize, fp32_precision)
    return sums / keep.sum().clamp(min=1), lse1, lse2


@_fused_forward.register_fake
def _(audio, visual, keep, temperature, row_start, row_count, normalize, fp32_precision="ieee"):
    lse = audio.new_empty(audio.shape[0], row_count, dtype=torch.float32)
    return audio.new_empty(audio.shape[0], dtype=torch.float32), lse, torch.empty_like(lse)


@torch.library.custom_op("maavt::blockwise_contrastive_bwd", mutates_args=())
def _fused_backward(grad: torch.Tensor, audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor,
                    temperature: torch.Tensor, lse1: torch.Tensor, lse2: torch.Tensor, row_start: int,
                    normalize: bool, fp32_precision: str = "ieee") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backward: grad (L,) of the per-block losses -> (d audio, d visual, d temperature)."""
    gscale = (grad.float() / keep.sum().clamp(min=1)).contiguous()
    da, dv, dtemp = _KERNELS.contrastive_backward(audio, visual, keep.view(torch.uint8), temperature, lse1, lse2,
                                                  gscale, row_start, normalize, fp32_precision)
    return da, dv, dtemp.sum().reshape(()) if temperature.dim() == 0 else dtemp


@_fused_backward.register_fake
def _(grad, audio, visual, keep, temperature, lse1, lse2, row_start, normalize, fp32_precision="ieee"):
    return audio.new_empty(audio.shape), visual.new_empty(visual.shape), temperature.new_empty(temperature.shape)


def _setup_context(ctx, inputs, output):
    audio, visual, keep, temperature, row_start, _, normalize, fp32_precision = inputs
    ctx.save_for_backward(audio, visual, keep, temperature, output[1], output[2])
    ctx.row_start, ctx.normalize, ctx.fp32_precision = row_start, normalize, fp32_precision


def _backward(ctx, grad, _grad_lse1, _grad_lse2):
    da, dv, dtemp = _fused_backward(grad, *ctx.saved_tensors, ctx.row_start, ctx.normalize, ctx.fp32_precision)
    return da, dv, None, dtemp, None, None, None, None


_fused_forward.register_autograd(_backward, setup_context=_setup_context)


def blockwise_contrastive_loss(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor | None = None,
                               temperature: float | torch.Tensor | None = None, normalize: bool = True,
                               reduction: str = "mean", impl: str = "auto", gather: bool = False,
                               group: torch.distributed.ProcessGroup | None = None, *,
                               logit_scale: float | torch.Tensor | None = None,
                               fp32_precision: str = "ieee") -> torch.Tensor:
    """Functional API: (L, B, P) or (B, P) features x2 -> loss (`reduction="none"`: (L,), or () for 2-D).

    Give at most one of `temperature` (default 0.07 when neither is given) and `logit_scale` (a multiplier,
    e.g. `log_scale.exp()`; gradients flow to a tensor); both must be finite and > 0 (a tensor's value is
    checked only on CPU, to avoid a device sync per call). `impl` is "auto" (Triton on CUDA where the
    kernel supports the inputs, else the reference), "torch" or "triton".

    gather=True (with a process group of W > 1 ranks) is the local-loss formulation with gathered features
    that carry gradients: each rank scores its own B rows against the features of all W*B rows, and the
    all-gather's backward returns every rank's column gradients to their owner. The returned value is the
    full-batch loss; the gradient is W x the local share, so after DistributedDataParallel's average the
    step equals one process on the global batch (see `maavt_fast.ops.distributed`). Every rank must hold
    the same B. `group` is the process group (None: the default group). With one rank or no process group
    it changes nothing.
    """
    audio, visual, one_block = as_blocks(audio, visual)
    temperature = temperature_of(temperature, logit_scale)
    _check_inputs(audio, visual, keep, temperature, reduction)
    check_fp32_precision(fp32_precision)
    B = audio.shape[1]
    keep = torch.ones(B, dtype=torch.bool, device=audio.device) if keep is None else keep.contiguous()
    gathered = gather and distributed.multi_rank(group)
    row_start = 0
    if gathered:
        audio, visual, keep, row_start = distributed.gather_features(audio, visual, keep, group)
    per_block = rows_loss(audio, visual, keep, temperature, normalize, impl, row_start, B, fp32_precision)
    if gathered:
        per_block = distributed.global_loss(per_block, group)
    return _reduce(per_block.squeeze(0) if one_block else per_block, reduction)


def rows_loss(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor, temperature: float | torch.Tensor,
              normalize: bool, impl: str, row_start: int, row_count: int,
              fp32_precision: str = "ieee") -> torch.Tensor:
    """Per-block share (L,) of the loss rows `row_start : row_start + row_count`, divided by the kept count
    of all B rows, on validated (L, B, P) inputs; dispatches to the kernel or the (fp32) reference."""
    unsupported = unsupported_dtype(audio.dtype)
    if use_triton(impl, "blockwise_contrastive_loss", _KERNELS, audio, visual, unsupported=unsupported):
        temp = _temperature_tensor(temperature, audio.shape[0], audio.device)
        return _fused_forward(audio, visual, keep, temp, row_start, row_count, normalize, fp32_precision)[0]
    with autocast_off(audio.device):
        return blockwise_contrastive_loss_reference(audio, visual, keep, temperature, normalize, "none",
                                                    row_start, row_count)


class BlockwiseContrastiveLoss(torch.nn.Module):
    """Module wrapper of `blockwise_contrastive_loss` with a fixed temperature:
    (L, B, P) or (B, P) x2, keep (B,) -> loss."""

    def __init__(self, temperature: float = 0.07, normalize: bool = True, reduction: str = "mean",
                 impl: str = "auto", gather: bool = False, group: torch.distributed.ProcessGroup | None = None,
                 fp32_precision: str = "ieee"):
        super().__init__()
        temperature_of(temperature, None)  # validates it now rather than at the first call
        self.temperature, self.normalize, self.reduction = temperature, normalize, reduction
        self.impl, self.gather, self.group, self.fp32_precision = impl, gather, group, fp32_precision

    def forward(self, audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        return blockwise_contrastive_loss(audio, visual, keep, self.temperature, self.normalize, self.reduction,
                                          self.impl, self.gather, self.group,
                                          fp32_precision=self.fp32_precision)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, normalize={self.normalize}, reduction={self.reduction!r}, "
                f"impl={self.impl!r}, gather={self.gather}, fp32_precision={self.fp32_precision!r}")
