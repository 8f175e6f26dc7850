"""One training step (forward, loss, backward, optional OGM-GE and clipping, optimizer) and its precision.

`TrainStep` wraps the step in `torch.compile` unless told not to. Dynamo compiles the forward with
its AOT backward into one graph and the optimizer update into another; `.backward()` and, with
OGM-GE, the seeded noise draw run eagerly between them. The learning rate lives in a tensor, so a
schedule never triggers a recompile.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from maavt_fast.model.loss import MAAVTLoss
from maavt_fast.train.grad_mod import modulate_gradients, noise_seed, ogm_coefficients
from maavt_fast.train.metrics import batch_counts
from maavt_fast.train.optim import build_optimizer, clip_gradients  # noqa: F401 - build_optimizer re-exported

LOSS_NAMES = ("loss", "loss_fg", "loss_bg", "loss_contrastive")


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU advertises avx512_bf16 or AMX-BF16 (bf16 GEMMs then run ~3x faster than fp32)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


@dataclass(frozen=True)
class Precision:
    """The autocast dtype (None = plain fp32) and a sentence saying why, for the log."""

    dtype: torch.dtype | None
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None)


def choose_precision(requested: str, device: torch.device) -> Precision:
    """`requested` is "auto" | "bf16" | "fp32"; auto = bf16 autocast on CUDA with bf16 or CPUs with native bf16."""
    if requested == "fp32":
        return Precision(None, "fp32 (train.precision=fp32)")
    if requested == "bf16":
        return Precision(torch.bfloat16, "bf16 autocast (train.precision=bf16)")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, "bf16 autocast (auto: CUDA device supports bf16)")
        return Precision(None, "fp32 (auto: this CUDA device has no bf16)")
    if cpu_has_native_bf16():
        return Precision(torch.bfloat16, "bf16 autocast (auto: CPU has avx512_bf16/amx_bf16)")
    return Precision(None, "fp32 (auto: CPU lacks native bf16, bf16 would be emulated and slower)")


class TrainStep:
    """Callable `(audio (B,T,S,S), image (B,T,3,S,S), label (B,T)) -> dict` of detached tensors:
    the present losses (0-dim), `counts` (one per `metrics.COUNT_NAMES`) from `metrics.batch_counts` and,
    with `clip_grad_norm`, `grad_norm` (the total gradient norm before clipping, after OGM-GE).

    `model` is what runs the forward (the DDP wrapper under torchrun); `raw_model` is the bare `MAAVT`
    (its modality parameters for OGM-GE); `loss_fn` the loss (default: `MAAVTLoss` of the whole batch,
    no process group).
    """

    def __init__(self, model: torch.nn.Module, raw_model, optimizer: torch.optim.Optimizer, precision: Precision,
                 device: torch.device, grad_mod_alpha: float | None = None, compile: bool = True, seed: int = 0,
                 clip_grad_norm: float | None = None, loss_fn: MAAVTLoss | None = None):
        self.model, self.optimizer, self.precision, self.device = model, optimizer, precision, device
        self.loss_fn = MAAVTLoss(raw_model.cfg) if loss_fn is None else loss_fn
        self.grad_mod_alpha, self.seed, self.clip_grad_norm = grad_mod_alpha, seed, clip_grad_norm
        self.modality_params = raw_model.modality_parameters() if grad_mod_alpha is not None else None
        self.noise = torch.Generator(device) if grad_mod_alpha is not None else None
        self._fn = torch.compile(self._step) if compile else self._step

    def __call__(self, audio: torch.Tensor, image: torch.Tensor, label: torch.Tensor,
                 step: int) -> dict[str, torch.Tensor]:
        """Run optimizer step number `step` (0-based; it seeds the OGM-GE gradient noise)."""
        self.model.train()
        if self.noise is not None:
            self.noise.manual_seed(noise_seed(self.seed, step))
        result = self._fn(audio, image, label)
        self.optimizer.zero_grad(set_to_none=True)  # outside the compiled function: Dynamo skips zero_grad
        return result

    def _step(self, audio: torch.Tensor, image: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.precision.autocast(self.device):
            out = self.loss_fn(self.model(audio, image), label)
        out.loss.backward()
        return self.apply_gradients(out, label)

    def apply_gradients(self, out, label: torch.Tensor) -> dict[str, torch.Tensor]:
        """After the backward: OGM-GE (coefficients from `out.modality_logits`), clipping and the optimizer
        step on the parameters' gradients -> the step's result (losses and counts of the batch `out`, `label`)."""
        if self.modality_params is not None:
            coeff_a, coeff_v = ogm_coefficients(*out.modality_logits, label, self.grad_mod_alpha)
            modulate_gradients(self.modality_params, coeff_a, coeff_v, self.noise)
        grad_norm = clip_gradients(self.optimizer, self.clip_grad_norm) if self.clip_grad_norm is not None else None
        self.optimizer.step()
        result = {k: getattr(out, k).detach().float() for k in LOSS_NAMES if getattr(out, k) is not None}
        if grad_norm is not None:
            result["grad_norm"] = grad_norm  # before clipping
        result["counts"] = batch_counts(out.fg_logits, out.bg_logits, label)
        return result
