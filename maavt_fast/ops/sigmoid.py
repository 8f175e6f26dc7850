"""Blockwise pairwise sigmoid (SigLIP) loss over stacked per-block features.

Shapes: audio, visual `(L, B, P)` (L blocks, B rows, P features) or `(B, P)` (one block); keep `(B,)` bool
(False = background row, excluded from both sides). Per block, with unit vectors when `normalize`:
    z_ij = logit_scale * <v_i, a_j> + logit_bias   (rows visual, columns audio),
    y_ij = +1 if i == j else -1,
    loss = -sum over kept i and kept j of log sigmoid(y_ij z_ij) / n_kept,
where n_kept is the number of kept rows (B when all are kept: SigLIP divides the pair sum by the batch
size). `reduction="mean"` averages the L block losses, `"none"` returns them `(L,)` (a scalar for
`(B, P)` inputs). `logit_scale` (the multiplier itself, not its log) and `logit_bias` are floats or
tensors of shape `()` or `(L,)`; tensors receive gradients.

Implementations: the readable reference below, and fused Triton kernels (`maavt_fast.kernels.sigmoid`)
behind the `torch.library` custom ops `maavt::blockwise_sigmoid_fwd/_bwd`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from maavt_fast.ops import distributed
from maavt_fast.ops._dispatch import load_kernels, use_triton
from maavt_fast.ops.contrastive import _reduce

_KERNELS = load_kernels("sigmoid")


def sigmoid_loss_sums_reference(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor,
                                logit_scale: float | torch.Tensor, logit_bias: float | torch.Tensor,
                                normalize: bool = True, row_start: int = 0) -> torch.Tensor:
    """Per-block pair-loss sums (L,) from explicit (L, R, C) logits, in fp32 (fp64 for fp64 inputs).

    audio (L, C, P) are the columns, visual (L, R, P) the rows: row r is the sample of column
    `row_start + r` (R = C in one process; this rank's rows against all ranks' columns when gathered).
    keep (C,) bool over the columns.
    """
    dtype = torch.promote_types(audio.dtype, torch.float32)
    a, v = audio.to(dtype), visual.to(dtype)
    if normalize:
        a, v = F.normalize(a, dim=-1), F.normalize(v, dim=-1)
    R, C = v.shape[1], a.shape[1]
    scale = torch.as_tensor(logit_scale, dtype=dtype, device=a.device).reshape(-1, 1, 1)
    bias = torch.as_tensor(logit_bias, dtype=dtype, device=a.device).reshape(-1, 1, 1)
    logits = scale * torch.bmm(v, a.transpose(1, 2)) + bias  # (L, R, C)
    rows = torch.arange(R, device=a.device) + row_start
    labels = torch.where(rows[:, None] == torch.arange(C, device=a.device)[None, :], 1.0, -1.0).to(dtype)
    pair_kept = keep[rows][:, None] & keep[None, :]
    return torch.where(pair_kept, -F.logsigmoid(labels * logits), 0.0).sum(dim=(1, 2))


def blockwise_sigmoid_loss_reference(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor | None = None,
                                     logit_scale: float | torch.Tensor = 10.0,
                                     logit_bias: float | torch.Tensor = -10.0, normalize: bool = True,
                                     reduction: str = "mean") -> torch.Tensor:
    """Readable PyTorch reference of `blockwise_sigmoid_loss` (one process)."""
    audio, visual, keep, squeeze = _prepare(audio, visual, keep, logit_scale, logit_bias, reduction)
    per_block = sigmoid_loss_sums_reference(audio, visual, keep, logit_scale, logit_bias, normalize)
    return _finish(per_block / keep.sum().clamp(min=1), reduction, squeeze)


def _prepare(audio, visual, keep, logit_scale, logit_bias, reduction):
    """Checked (L, B, P) views, a contiguous keep mask, and whether the inputs were (B, P)."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if audio.shape != visual.shape or audio.dim() not in (2, 3):
        raise ValueError(f"audio and visual must both be (L, B, P) or (B, P); "
                         f"got {tuple(audio.shape)} and {tuple(visual.shape)}")
    squeeze = audio.dim() == 2
    if squeeze:
        audio, visual = audio.unsqueeze(0), visual.unsqueeze(0)
    L, B, _ = audio.shape
    if keep is None:
        keep = torch.ones(B, dtype=torch.bool, device=audio.device)
    if keep.shape != (B,) or keep.dtype != torch.bool:
        raise ValueError(f"keep must be a bool tensor of shape ({B},); got {keep.dtype} {tuple(keep.shape)}")
    if keep.device != audio.device:
        raise ValueError(f"keep is on {keep.device} but the features are on {audio.device}")
    for name, value in (("logit_scale", logit_scale), ("logit_bias", logit_bias)):
        if isinstance(value, torch.Tensor) and value.numel() not in (1, L):
            raise ValueError(f"{name} must be a float or a tensor of 1 or L={L} values; got shape {tuple(value.shape)}")
    return audio, visual, keep.contiguous(), squeeze


def _finish(per_block: torch.Tensor, reduction: str, squeeze: bool) -> torch.Tensor:
    return per_block[0] if squeeze and reduction == "none" else _reduce(per_block, reduction)


def _per_block(value: float | torch.Tensor, blocks: int, device: torch.device) -> torch.Tensor:
    """fp32 tensor of shape () or (L,), keeping the autograd link of a tensor argument."""
    if not isinstance(value, torch.Tensor):
        return torch.full((), float(value), dtype=torch.float32, device=device)
    return value.float().reshape(() if value.numel() == 1 else (blocks,))


@torch.library.custom_op("maavt::blockwise_sigmoid_fwd", mutates_args=())
def _fused_sums(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor, row_start: int, normalize: bool) -> torch.Tensor:
    """Triton forward -> per-block pair-loss sums (L,) fp32 (arguments as `sigmoid_loss_sums_reference`)."""
    return _KERNELS.sigmoid_forward(audio, visual, keep.contiguous().view(torch.uint8), logit_scale, logit_bias,
                                    row_start, normalize)


@_fused_sums.register_fake
def _(audio, visual, keep, logit_scale, logit_bias, row_start, normalize):
    return audio.new_empty(audio.shape[0], dtype=torch.float32)


@torch.library.custom_op("maavt::blockwise_sigmoid_bwd", mutates_args=())
def _fused_backward(grad: torch.Tensor, audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor,
                    logit_scale: torch.Tensor, logit_bias: torch.Tensor, row_start: int, normalize: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backward: grad (L,) of the sums -> (d audio, d visual, d logit_scale, d logit_bias)."""
    da, dv, d_scale, d_bias = _KERNELS.sigmoid_backward(grad.float().contiguous(), audio, visual,
                                                        keep.contiguous().view(torch.uint8), logit_scale,
                                                        logit_bias, row_start, normalize)
    return (da, dv, d_scale.sum().reshape(()) if logit_scale.dim() == 0 else d_scale,
            d_bias.sum().reshape(()) if logit_bias.dim() == 0 else d_bias)


@_fused_backward.register_fake
def _(grad, audio, visual, keep, logit_scale, logit_bias, row_start, normalize):
    return (audio.new_empty(audio.shape), visual.new_empty(visual.shape), logit_scale.new_empty(logit_scale.shape),
            logit_bias.new_empty(logit_bias.shape))


def _setup_context(ctx, inputs, output):
    audio, visual, keep, logit_scale, logit_bias, row_start, normalize = inputs
    ctx.save_for_backward(audio, visual, keep, logit_scale, logit_bias)
    ctx.row_start, ctx.normalize = row_start, normalize


def _backward(ctx, grad):
    da, dv, d_scale, d_bias = _fused_backward(grad, *ctx.saved_tensors, ctx.row_start, ctx.normalize)
    return da, dv, None, d_scale, d_bias, None, None


_fused_sums.register_autograd(_backward, setup_context=_setup_context)


def sigmoid_loss_sums(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor,
                      logit_scale: float | torch.Tensor, logit_bias: float | torch.Tensor, normalize: bool,
                      row_start: int, impl: str) -> torch.Tensor:
    """Per-block pair-loss sums (L,) of rows `visual` against columns `audio` (see the reference), by `impl`."""
    if use_triton(impl, "blockwise_sigmoid_loss", _KERNELS, audio, visual):
        L = audio.shape[0]
        return _fused_sums(audio, visual, keep, _per_block(logit_scale, L, audio.device),
                           _per_block(logit_bias, L, audio.device), row_start, normalize)
    return sigmoid_loss_sums_reference(audio, visual, keep, logit_scale, logit_bias, normalize, row_start)


def blockwise_sigmoid_loss(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor | None = None,
                           logit_scale: float | torch.Tensor = 10.0, logit_bias: float | torch.Tensor = -10.0,
                           normalize: bool = True, reduction: str = "mean", impl: str = "auto", gather: bool = False,
                           group: torch.distributed.ProcessGroup | None = None) -> torch.Tensor:
    """Functional API; `impl` is "auto" (Triton on CUDA, reference on CPU), "torch" or "triton".

    gather=True (with a process group of W > 1 ranks, `group` or the default one) scores the local
    visual rows against the audio columns of all ranks (see `maavt_fast.ops.distributed`): the value is
    the full-batch loss (n_kept counts the kept rows of all ranks) and the gradient W x the local share,
    which DistributedDataParallel's average turns into the full-batch gradient. Without such a group it
    changes nothing.
    """
    audio, visual, keep, squeeze = _prepare(audio, visual, keep, logit_scale, logit_bias, reduction)
    gathered = gather and distributed.multi_rank(group)
    columns, keep_all, row_start = (distributed.gather_columns(audio, keep, group) if gathered
                                    else (audio, keep, 0))
    sums = sigmoid_loss_sums(columns, visual, keep_all, logit_scale, logit_bias, normalize, row_start, impl)
    per_block = sums / keep_all.sum().clamp(min=1)
    if gathered:
        per_block = distributed.global_loss(per_block, group)
    return _finish(per_block, reduction, squeeze)


class BlockwiseSigmoidLoss(torch.nn.Module):
    """Module form of `blockwise_sigmoid_loss` with learnable scale and bias, initialised as SigLIP does.

    Parameters: `log_scale` (shape () or (L,) with `blocks`), logit_scale = exp(log_scale), init log(10);
    `bias`, init -10. forward: audio, visual (L, B, P) or (B, P), keep (B,) -> loss.
    """

    def __init__(self, blocks: int | None = None, init_scale: float = 10.0, init_bias: float = -10.0,
                 normalize: bool = True, reduction: str = "mean", impl: str = "auto", gather: bool = False):
        super().__init__()
        shape = () if blocks is None else (blocks,)
        self.log_scale = torch.nn.Parameter(torch.full(shape, float(init_scale)).log())
        self.bias = torch.nn.Parameter(torch.full(shape, float(init_bias)))
        self.normalize, self.reduction, self.impl, self.gather = normalize, reduction, impl, gather

    def forward(self, audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        return blockwise_sigmoid_loss(audio, visual, keep, self.log_scale.exp(), self.bias, self.normalize,
                                      self.reduction, self.impl, self.gather)
