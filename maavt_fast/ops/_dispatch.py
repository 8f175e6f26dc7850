"""Which implementation an op call runs: the PyTorch reference or the Triton kernels.

Rule: `impl="auto"` runs Triton on CUDA tensors (when triton imports) and the reference otherwise;
`"torch"` and `"triton"` force one. The Triton kernels also run on CPU tensors when they were defined
under `TRITON_INTERPRET=1` (set before `maavt_fast.kernels` is imported); that is how tests run them.
"""
from __future__ import annotations

import importlib
import types

import torch

IMPLS = ("auto", "torch", "triton")


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


def use_triton(impl: str, op: str, kernels: types.ModuleType | None, *tensors: torch.Tensor) -> bool:
    """Decide the implementation of one call; `impl="triton"` that cannot run raises a clear error."""
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {IMPLS}; got {impl!r}")
    if impl == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if impl == "auto":
        return on_cuda and kernels is not None
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
