"""Compile the kernels for a CUDA architecture without a GPU and report what the GPU would run.

The interpreter runs kernels as NumPy code, so it accepts things the GPU compiler rejects (a global
that is not a constexpr, mismatched branch types, a bad `tl.dot` shape) and says nothing about speed.
Here every launcher runs on "meta" tensors at model sizes inside `_launch.recording()`, once per tile
configuration (`_launch.pinned`; the sigmoid kernels: each autotune candidate) and dtype; each recorded
launch is compiled with `triton.compile` for the target (PTX and cubin via the bundled ptxas, no driver
needed), specialised as the JIT would
(pointers and multiples of 16 aligned, ints equal to 1 constant). Per kernel, configuration and dtype
the report gives the tiles, whether the PTX uses Hopper's warpgroup MMA (`wgmma`), the registers and
spilled bytes from `ptxas -v`, and the static shared memory.

    python -m maavt_fast.kernels._aot_check [--arch 90] [--quick]      (TRITON_INTERPRET unset)
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import re
import subprocess
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget

from maavt_fast.kernels import _launch, contrastive, group_attention, sigmoid

_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.uint8: "u8", torch.int32: "i32"}
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
LARGE_ROWS = 64  # contrastive tiles with at least this many rows must use wgmma in bf16/fp16


@dataclasses.dataclass(frozen=True)
class Row:
    """One compiled kernel: what sm_<arch> would run."""
    kernel: str
    config: str  # `_launch.describe` of the tile config, or the group-attention tiles
    dtype: str
    wgmma: bool
    registers: int
    spill_bytes: int  # spill stores + spill loads
    shared_bytes: int

    def needs_wgmma(self) -> bool:
        rows = int(self.config.split("x")[0]) if self.kernel.startswith("contrastive") else 0
        return self.dtype in ("bf16", "fp16") and rows >= LARGE_ROWS


def _specialise(value):
    """(signature type or None for a constant, divisible by 16) of one argument, as the JIT specialises it."""
    if isinstance(value, torch.Tensor):
        return "*" + _TYPES[value.dtype], True
    if isinstance(value, bool):
        return "i1", False
    if isinstance(value, float):
        return "fp32", False
    return (None, False) if value == 1 else ("i32", value % 16 == 0)


def compile_launch(launch: _launch.Launch, arch: int):
    """triton.compile one recorded launch for `cuda:<arch>`."""
    options = {k: launch.kwargs[k] for k in ("num_warps", "num_stages") if k in launch.kwargs}
    constexprs = {k: v for k, v in launch.kwargs.items() if k not in options}
    names = [n for n in launch.kernel.arg_names if n not in constexprs]
    signature, attrs = {}, {}
    for name, value in zip(names, launch.args):
        kind, aligned = _specialise(value)
        if kind is None:
            constexprs[name] = value
        signature[name] = kind or "constexpr"
        if aligned:
            attrs[(launch.kernel.arg_names.index(name),)] = [["tt.divisibility", 16]]
    signature |= {n: "constexpr" for n in constexprs}
    source = triton.compiler.ASTSource(fn=launch.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """(registers per thread, spilled bytes) that `ptxas -v` reports for the PTX."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        suffix = "a" if arch >= 90 else ""
        log = subprocess.run([triton.knobs.nvidia.ptxas.path, "-v", f"--gpu-name=sm_{arch}{suffix}", str(src),
                              "-o", str(Path(tmp) / "kernel.cubin")], capture_output=True, text=True, check=True)
    text = log.stdout + log.stderr
    registers = int(re.search(r"Used (\d+) registers", text).group(1))
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", text))
    return registers, spills


def _contrastive_launches(dtype: torch.dtype, forward: _launch.TileConfig, backward: _launch.TileConfig):
    """Recorded launches of the contrastive forward and backward at L = 12, B = 4096, P = 512."""
    meta = dict(device="meta", dtype=dtype)
    audio, visual = torch.empty(12, 4096, 512, **meta), torch.empty(12, 4096, 512, **meta)
    keep = torch.empty(4096, device="meta", dtype=torch.uint8)
    temp, gscale = torch.empty((), device="meta"), torch.empty(12, device="meta")
    with _launch.pinned(contrastive_fwd=forward, contrastive_bwd=backward), _launch.recording() as calls:
        _, lse1, lse2 = contrastive.contrastive_forward(audio, visual, keep, temp, 0, 4096, True)
        contrastive.contrastive_backward(audio, visual, keep, temp, lse1, lse2, gscale, 0, True)
    return calls


def _group_attention_launches(dtype: torch.dtype):
    """Recorded launches of group attention at the model's sizes (G = 3, M = 64, n = 5, D = 768, 8 heads)."""
    meta = dict(device="meta", dtype=dtype)
    x = torch.empty(3, 64, 5, 768, **meta)
    weights = [torch.empty(3, 2304, 768, **meta), torch.empty(3, 2304, **meta), torch.empty(3, 768, 768, **meta),
               torch.empty(3, 768, **meta)]
    with _launch.recording() as calls:
        _, o = group_attention.group_attention_forward(x, *weights, 8)
        group_attention.group_attention_backward(torch.empty_like(x), x, *weights[:3], o, 8)
    return calls


def _each_config(launch: _launch.Launch, quick: bool) -> list[_launch.Launch]:
    """An autotuned launch as one launch per candidate autotune keeps for its arguments (`quick`: the last one)."""
    tuner = launch.kernel
    configs = tuner.early_config_prune(tuner.configs, dict(zip(tuner.arg_names, launch.args)))
    configs = configs[-1:] if quick else configs
    return [_launch.Launch(launch.name, launch.kernel.fn, launch.args, launch.kwargs | c.kwargs
                           | {"num_warps": c.num_warps, "num_stages": c.num_stages}) for c in configs]


def _sigmoid_launches(dtype: torch.dtype, quick: bool):
    """Recorded launches of the sigmoid loss forward and backward at L = 12, C = R = 4096, P = 512, one per
    autotune candidate."""
    meta = dict(device="meta", dtype=dtype)
    audio, visual = torch.empty(12, 4096, 512, **meta), torch.empty(12, 4096, 512, **meta)
    keep, scale = torch.empty(4096, device="meta", dtype=torch.uint8), torch.empty((), device="meta")
    with _launch.recording() as calls:
        sigmoid.sigmoid_forward(audio, visual, keep, scale, scale, 0, True)
        sigmoid.sigmoid_backward(torch.empty(12, device="meta"), audio, visual, keep, scale, scale, 0, True)
    return [c for call in calls for c in _each_config(call, quick)]


def _label(launch: _launch.Launch) -> str:
    if "BR" in launch.kwargs and "PC" in launch.kwargs:
        return _launch.describe(_launch.TileConfig(launch.kwargs["BR"], launch.kwargs["BC"], launch.kwargs["PC"],
                                                   launch.kwargs["num_warps"], launch.kwargs.get("num_stages", 3)))
    tiles = {k: v for k, v in launch.kwargs.items() if isinstance(v, int) and not isinstance(v, bool)}
    return " ".join(f"{k}={v}" for k, v in tiles.items())


def _area(config: _launch.TileConfig) -> int:
    return config.rows * config.cols * config.features


def _contrastive_configs(dtype: torch.dtype, quick: bool) -> list[_launch.Launch]:
    """Each contrastive config (`quick`: the largest forward and backward config only)."""
    size = torch.empty((), dtype=dtype).element_size()
    forward, backward = contrastive.FORWARD_CONFIGS[size], contrastive.BACKWARD_CONFIGS[size]
    if quick:
        pairs = [(max(forward, key=_area), max(backward, key=_area))]
    else:
        small = contrastive.SMALL[size]
        pairs = list(itertools.zip_longest(forward, backward, fillvalue=small)) + [(small, small)]
    return [c for f, b in pairs for c in _contrastive_launches(dtype, f, b)]


# Op -> its launches to check for (dtype, quick).
OPS = {"contrastive": _contrastive_configs, "group_attention": lambda dtype, quick: _group_attention_launches(dtype),
       "sigmoid": _sigmoid_launches}


def launches(dtype: torch.dtype, quick: bool, ops=tuple(OPS)) -> list[_launch.Launch]:
    """Every kernel launch of `ops` to check for one dtype."""
    return [c for op in ops for c in OPS[op](dtype, quick)]


def check(arch: int = 90, dtypes=DTYPES, quick: bool = False, ops=tuple(OPS)) -> list[Row]:
    """Compile and measure every launch of `launches` for each dtype."""
    if _launch.INTERPRETED:
        raise RuntimeError("unset TRITON_INTERPRET: interpreted kernels cannot be compiled for a GPU")
    rows = []
    for dtype in dtypes:
        for launch in launches(dtype, quick, ops):
            compiled = compile_launch(launch, arch)
            registers, spills = ptxas_usage(compiled.asm["ptx"], arch)
            rows.append(Row(launch.name, _label(launch), _TYPES[dtype], "wgmma" in compiled.asm["ptx"], registers,
                            spills, compiled.metadata.shared))
    return rows


def problems(rows: list[Row]) -> list[str]:
    """What fails the check: spills anywhere, or a large bf16/fp16 contrastive tile without wgmma."""
    return ([f"{r.kernel} {r.config} {r.dtype}: {r.spill_bytes} bytes spilled" for r in rows if r.spill_bytes]
            + [f"{r.kernel} {r.config} {r.dtype}: no wgmma" for r in rows if r.needs_wgmma() and not r.wgmma])


def table(rows: list[Row]) -> str:
    """Markdown table of the rows."""
    lines = ["| kernel | config | dtype | wgmma | registers | spilled bytes | shared bytes |", "|---" * 7 + "|"]
    lines += [f"| {r.kernel} | {r.config} | {r.dtype} | {'yes' if r.wgmma else 'no'} | {r.registers} | "
              f"{r.spill_bytes} | {r.shared_bytes} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 90 for sm_90")
    parser.add_argument("--quick", action="store_true", help="only the largest contrastive configs "
                        "(and group attention)")
    args = parser.parse_args(argv)
    rows = check(args.arch, quick=args.quick)
    print(table(rows))
    failed = problems(rows)
    for line in failed:
        print("FAIL", line)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
