"""Shared launcher helpers: launch counting, dot precision per dtype, block sizes, interpreter check."""
from __future__ import annotations

import collections

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction

# Number of kernel launches per kernel name; tests assert on it to prove the kernel really ran.
LAUNCHES: collections.Counter[str] = collections.Counter()


def launch(name: str, kernel, grid: tuple[int, ...], *args, **kwargs) -> None:
    """Launch `kernel[grid](*args, **kwargs)` and count it under `name`."""
    kernel[grid](*args, **kwargs)
    LAUNCHES[name] += 1


@triton.jit
def _probe():
    pass


# True when kernels here are defined under TRITON_INTERPRET=1: they then run on CPU tensors.
INTERPRETED: bool = isinstance(_probe, InterpretedFunction)


def dot_precisions(dtype: torch.dtype) -> tuple[str, str]:
    """(precision for dots of raw loaded inputs, precision for dots of fp32 intermediates).

    fp32 inputs use IEEE fp32 everywhere. fp16/bf16 values are exact in TF32, so raw-input dots use
    TF32 (tensor cores, exact products); dots of fp32 intermediates use the 3-pass TF32 ("tf32x3"),
    which is close to fp32 accuracy.
    """
    if dtype == torch.float32:
        return "ieee", "ieee"
    if dtype in (torch.float16, torch.bfloat16):
        return "tf32", "tf32x3"
    raise TypeError(f"Triton kernels take float32, float16 or bfloat16 tensors; got {dtype}")


def block(n: int, minimum: int = 16, maximum: int | None = None) -> int:
    """Power-of-two tile side >= n (and >= `minimum`, the smallest `tl.dot` side), capped at `maximum`."""
    size = max(minimum, triton.next_power_of_2(n))
    return min(size, maximum) if maximum else size
