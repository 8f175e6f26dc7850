"""Argument normalisation shared by the public op functions: 2-D features, temperature / logit_scale,
dtypes and autocast. Each helper either returns normalised arguments or raises one clear error."""
from __future__ import annotations

import contextlib
import math

import torch

DEFAULT_TEMPERATURE = 0.07


def _check_positive(name: str, value: float | torch.Tensor) -> None:
    """Raise unless `value` is finite and > 0. A tensor is checked only on CPU outside torch.compile: on an
    accelerator the check would wait for the device on every call (a host sync), so there it is skipped."""
    if isinstance(value, torch.Tensor):
        if value.device.type != "cpu" or torch.compiler.is_compiling():
            return
        ok = bool(torch.isfinite(value).all()) and bool((value > 0).all())
        shown = value.detach().tolist()
    else:
        ok = math.isfinite(value) and value > 0
        shown = value
    if not ok:
        raise ValueError(f"{name} must be finite and > 0; got {shown}")


def temperature_of(temperature: float | torch.Tensor | None,
                   logit_scale: float | torch.Tensor | None) -> float | torch.Tensor:
    """The temperature to divide the logits by, from exactly one of `temperature` or `logit_scale`
    (a multiplier, temperature = 1 / logit_scale; a tensor keeps its autograd link). Neither: 0.07."""
    if temperature is not None and logit_scale is not None:
        raise ValueError("pass either temperature or logit_scale (= 1 / temperature), not both")
    if logit_scale is not None:
        _check_positive("logit_scale", logit_scale)
        return logit_scale.reciprocal() if isinstance(logit_scale, torch.Tensor) else 1.0 / logit_scale
    if temperature is None:
        return DEFAULT_TEMPERATURE
    _check_positive("temperature", temperature)
    return temperature


def as_blocks(audio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(B, P) features -> (1, B, P) and True (one block, to be squeezed back); (L, B, P) unchanged and False.
    Both are brought to their common dtype."""
    if audio.dim() != visual.dim() or audio.dim() not in (2, 3):
        raise ValueError(f"audio and visual must both be (B, P) or (L, B, P); got {tuple(audio.shape)} "
                         f"and {tuple(visual.shape)}")
    dtype = torch.promote_types(audio.dtype, visual.dtype)
    audio, visual = audio.to(dtype), visual.to(dtype)
    if audio.dim() == 2:
        return audio.unsqueeze(0), visual.unsqueeze(0), True
    return audio, visual, False


_AUTOCAST_DEVICES = ("cpu", "cuda")  # the devices these ops run on (a constant: older Dynamo cannot trace
# torch.amp.is_autocast_available)


def _autocast_on(device: torch.device) -> bool:
    return device.type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device.type)


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that disables autocast on `device` (for losses that must stay fp32), else does nothing."""
    return torch.autocast(device.type, enabled=False) if _autocast_on(device) else contextlib.nullcontext()


def follow_autocast(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cast floating tensors (not float64) to the autocast dtype when autocast is on for their device,
    as autocast does for matmuls (so an op returns what `nn.Linear` / `nn.MultiheadAttention` would)."""
    device = tensors[0].device
    if not _autocast_on(device):
        return tensors
    dtype = torch.get_autocast_dtype(device.type)
    return tuple(t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t for t in tensors)


def check_same_dtype(op: str, **tensors: torch.Tensor) -> None:
    """Raise unless all tensors share the first one's dtype (e.g. bf16 inputs with fp32 weights)."""
    (first, ref), *rest = tensors.items()
    for name, t in rest:
        if t.dtype != ref.dtype:
            raise TypeError(f"{op}: {first} is {ref.dtype} but {name} is {t.dtype}; give them one dtype "
                            f"(e.g. module.to({ref.dtype})) or run under torch.autocast")
