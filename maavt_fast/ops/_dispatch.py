"""Which implementation an op call runs: the PyTorch reference or the Triton kernels.

Rule: `impl="auto"` runs Triton on CUDA tensors (when triton imports) whose inputs the kernel supports,
and the reference otherwise; an unsupported input on CUDA (e.g. float64) is logged once per reason
(logger `maavt_fast.ops`, level WARNING; eager calls only) before the reference runs. `"torch"` forces
the reference; `"triton"` forces the kernels, which raise a clear error on inputs they do not support.
The Triton kernels also run on CPU tensors when they were defined under `TRITON_INTERPRET=1` (set
before `maavt_fast.kernels` is imported); that is how tests run them.
"""
from __future__ import annotations

import importlib
import logging
import types

import torch

IMPLS = ("auto", "torch", "triton")
# Input dtypes the Triton kernels take (their launchers raise TypeError on any other).
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_LOG = logging.getLogger("maavt_fast.ops")
_LOGGED: set[tuple[str, str]] = set()


def load_kernels(name: str) -> types.ModuleType | None:
    """`maavt_fast.kernels.<name>`, or None when triton is not installed. Call at import time."""
    try:
        return importlib.import_module(f"maavt_fast.kernels.{name}")
    except ImportError as err:
        if err.name is not None and err.name.split(".")[0] == "triton":
            return None
        raise


_LAUNCH = load_kernels("_launch")
# True when the kernels run in the CPU interpreter (TRITON_INTERPRET=1 when they were imported).
INTERPRETED: bool = _LAUNCH is not None and _LAUNCH.INTERPRETED


FP32_PRECISIONS = ("ieee", "tf32")  # dots of the Triton kernels on fp32 inputs: exact fp32 or TF32 tensor cores


def check_fp32_precision(fp32_precision: str) -> None:
    if fp32_precision not in FP32_PRECISIONS:
        raise ValueError(f"fp32_precision must be one of {FP32_PRECISIONS}; got {fp32_precision!r}")


def unsupported_dtype(dtype: torch.dtype) -> str | None:
    """The fallback reason for an input dtype the kernels do not take, else None."""
    return None if dtype in KERNEL_DTYPES else f"{dtype} inputs"


def log_fallback(op: str, reason: str) -> None:
    """Log once per (op, reason) that impl="auto" runs the reference. Not while torch.compile traces (a log
    call there breaks the graph): compiled code falls back the same way, and its eager calls log it."""
    if (op, reason) in _LOGGED or torch.compiler.is_compiling():
        return
    _LOGGED.add((op, reason))
    _LOG.warning("%s: the Triton kernel does not support %s; impl='auto' runs the PyTorch reference "
                 "(pass impl='torch' to choose it explicitly)", op, reason)


def all_on_cuda(tensors: tuple[torch.Tensor, ...]) -> bool:
    """The device condition of impl="auto" (tests patch it to emulate CUDA in the interpreter)."""
    return all(t.is_cuda for t in tensors)


def use_triton(impl: str, op: str, kernels: types.ModuleType | None, *tensors: torch.Tensor,
               unsupported: str | None = None) -> bool:
    """Decide the implementation of one call; `unsupported` says why the kernel cannot take these inputs.

    `impl="triton"` that cannot run raises a clear error; with `unsupported` set it returns True and the
    kernel's own check raises.
    """
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {IMPLS}; got {impl!r}")
    if impl == "torch":
        return False
    on_cuda = all_on_cuda(tensors)
    if impl == "auto":
        if not (on_cuda and kernels is not None):
            return False
        if unsupported is not None:
            log_fallback(op, unsupported)
            return False
        return True
    if kernels is None:
        raise RuntimeError(f"{op}: impl='triton' needs the triton package, which is not installed")
    if not (on_cuda or INTERPRETED):
        raise RuntimeError(f"{op}: impl='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before "
                           "maavt_fast is imported to run the kernels on CPU")
    return True


def kernel_device() -> torch.device | None:
    """Where the Triton kernels can run now: CUDA if present, else CPU under the interpreter, else None."""
    if _LAUNCH is None:
        return None
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu") if INTERPRETED else None
