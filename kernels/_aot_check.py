"""Compile the kernels for a CUDA architecture without a GPU, to catch what the interpreter lets pass.

The interpreter runs kernels as NumPy code, so it accepts things the GPU compiler rejects (a global
that is not a constexpr, mismatched branch types, a bad `tl.dot` shape). `compile_all()` runs every
launcher on "meta" tensors with `launch` replaced by a recorder, then compiles each recorded launch
with `triton.compile` for the target (PTX and cubin via the bundled ptxas; no driver needed).
Run with TRITON_INTERPRET unset:  python -m maavt_fast.kernels._aot_check [ARCH]
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from unittest import mock

import torch
import triton
from triton.backends.compiler import GPUTarget

from maavt_fast.kernels import _launch, contrastive, group_attention

_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.uint8: "u8", torch.int32: "i32"}


@contextmanager
def recorded_launches():
    """Inside, kernel launches are recorded as (kernel, args, kwargs) in the yielded list instead of run."""
    calls = []

    def record(name, kernel, grid, *args, **kwargs):
        calls.append((kernel, args, kwargs))

    with mock.patch.object(contrastive, "launch", record), mock.patch.object(group_attention, "launch", record):
        yield calls


def _arg_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + _TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    return "fp32" if isinstance(value, float) else "i32"


def compile_launch(kernel, args, kwargs, arch: int):
    """triton.compile one recorded launch for `cuda:<arch>`."""
    options = {"num_warps": kwargs.get("num_warps", 4)}
    constexprs = {k: v for k, v in kwargs.items() if k != "num_warps"}
    names = [n for n in kernel.arg_names if n not in constexprs]
    signature = {n: _arg_type(a) for n, a in zip(names, args)} | {n: "constexpr" for n in constexprs}
    source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def _model_sized_calls(dtype: torch.dtype) -> None:
    """Run every launcher once at model sizes on meta tensors (contrastive L=12, B=256, P=512; LSA D=768)."""
    meta = dict(device="meta", dtype=dtype)
    audio, visual = torch.empty(12, 256, 512, **meta), torch.empty(12, 256, 512, **meta)
    keep = torch.empty(256, device="meta", dtype=torch.uint8)
    temp = torch.empty((), device="meta")
    _, lse1, lse2 = contrastive.contrastive_forward(audio, visual, keep, temp, 0, 256, True)
    contrastive.contrastive_backward(audio, visual, keep, temp, lse1, lse2, torch.empty(12, device="meta"), 0, True)
    x = torch.empty(3, 1, 5, 768, **meta)
    weights = [torch.empty(3, 2304, 768, **meta), torch.empty(3, 2304, **meta), torch.empty(3, 768, 768, **meta),
               torch.empty(3, 768, **meta)]
    _, o = group_attention.group_attention_forward(x, *weights, 8)
    group_attention.group_attention_backward(torch.empty_like(x), x, *weights[:3], o, 8)


def compile_all(arch: int = 90, dtypes=(torch.bfloat16, torch.float16, torch.float32)) -> list[str]:
    """Compile every kernel at model sizes for each dtype; returns the names compiled."""
    if _launch.INTERPRETED:
        raise RuntimeError("unset TRITON_INTERPRET: interpreted kernels cannot be compiled for a GPU")
    compiled = []
    for dtype in dtypes:
        with recorded_launches() as calls:
            _model_sized_calls(dtype)
        for kernel, args, kwargs in calls:
            compile_launch(kernel, args, kwargs, arch)
            compiled.append(f"{kernel.__name__}[{_TYPES[dtype]}]")
    return compiled


if __name__ == "__main__":
    for name in compile_all(int(sys.argv[1]) if len(sys.argv) > 1 else 90):
        print("compiled", name)
