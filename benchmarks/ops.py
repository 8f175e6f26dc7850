"""Benchmark of the two fused ops: forward, backward and full (forward + backward) time and peak memory.

Implementations per op:
  release   eager PyTorch as the official release runs it: one small graph per block / per group
  reference the batched PyTorch reference of `maavt_fast.ops` (eager)
  compiled  torch.compile of that reference
  triton    the fused Triton kernels (CUDA only)
Sizes (issue 3): contrastive L = 12, P = 512, B in {64, 256, 1024, 4096} (4096 only on GPU: on a
2-core CPU one step of the references takes minutes); group attention G = 3, n = 5, 8 heads,
D in {192, 384, 768}, M in {1, 64}. GPU rows use bf16 inputs, CPU rows fp32.

    python benchmarks/ops.py [--quick] [--out DIR] [--repeats N] [--warmup N] [--impls a,b]
Rows go to DIR/ops.json and DIR/ops.csv (appended after each problem, so a timeout keeps the finished
ones; the sizes with targets run first) and the plot of this run to DIR/ops.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: import `benchmarks` as a package
from benchmarks import harness  # noqa: E402
from maavt_fast.ops import blockwise_contrastive_loss, group_attention, group_attention_reference  # noqa: E402
from maavt_fast.ops.contrastive import blockwise_contrastive_loss_reference  # noqa: E402

IMPLS = ("release", "reference", "compiled", "triton")
# One compiled reference per op for all sizes: after the first size torch.compile recompiles once with
# dynamic shapes, instead of once per size (compilation dominates the run time on a GPU).
_COMPILED = {"contrastive": torch.compile(blockwise_contrastive_loss_reference),
             "group_attention": torch.compile(group_attention_reference)}
MODES = ("forward", "backward", "full")
X_LABEL = "B (contrastive) or D (group attention)"


@dataclasses.dataclass
class Case:
    """One benchmarked problem: `make()` builds fresh inputs, `impls[name](*inputs)` returns a scalar-able output."""
    op: str
    variant: str  # the fixed part of the size, one plot panel each
    x: int  # the varying size (plot x axis)
    size: str
    make: Callable[[], list[torch.Tensor]]
    impls: dict[str, Callable[..., torch.Tensor]]


# ----------------------------------------------------------------------------------------------- contrastive
def contrastive_release(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The release's loop: per block, normalise, drop background rows, two cross-entropies."""
    total = audio.new_zeros((), dtype=torch.float32)
    for a, v in zip(audio, visual):
        a, v = F.normalize(a[keep], dim=-1), F.normalize(v[keep], dim=-1)
        logits = (v @ a.T).float() / 0.07
        labels = torch.arange(logits.shape[0], device=logits.device)
        total = total + (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    return total / audio.shape[0]


def contrastive_case(L: int, B: int, P: int, device: torch.device, dtype: torch.dtype) -> Case:
    def make():
        g = torch.Generator(device="cpu").manual_seed(B)
        audio, visual = (torch.randn(L, B, P, generator=g).to(device, dtype).requires_grad_() for _ in range(2))
        return [audio, visual, torch.rand(B, generator=g).to(device) > 0.1]

    return Case("contrastive", f"L={L},P={P}", B, f"L={L},B={B},P={P}", make, {
        "release": contrastive_release,
        "reference": lambda a, v, k: blockwise_contrastive_loss(a, v, k, impl="torch"),
        "compiled": lambda a, v, k: _COMPILED["contrastive"](a, v, k),
        "triton": lambda a, v, k: blockwise_contrastive_loss(a, v, k, impl="triton"),
    })


# ----------------------------------------------------------------------------------------------- group attention
def group_attention_release(x, qkv_weight, qkv_bias, proj_weight, proj_bias, num_heads: int) -> torch.Tensor:
    """The release's three separate attention modules, one after the other."""
    outs = []
    for g in range(x.shape[0]):
        M, n, D = x[g].shape
        qkv = F.linear(x[g], qkv_weight[g], qkv_bias[g]).reshape(M, n, 3, num_heads, D // num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (D // num_heads) ** -0.5).softmax(dim=-1)
        outs.append(F.linear((attn @ v).transpose(1, 2).reshape(M, n, D), proj_weight[g], proj_bias[g]))
    return torch.stack(outs)


def group_attention_case(G: int, M: int, n: int, D: int, heads: int, device: torch.device,
                         dtype: torch.dtype) -> Case:
    def make():
        g = torch.Generator(device="cpu").manual_seed(D)
        shapes = [(G, M, n, D), (G, 3 * D, D), (G, 3 * D), (G, D, D), (G, D)]
        return [(torch.randn(s, generator=g) * D ** -0.5).to(device, dtype).requires_grad_() for s in shapes]

    return Case("group_attention", f"G={G},M={M},n={n},heads={heads}", D, f"G={G},M={M},n={n},D={D}", make, {
        "release": lambda *t: group_attention_release(*t, heads),
        "reference": lambda *t: group_attention(*t, heads, impl="torch"),
        "compiled": lambda *t: _COMPILED["group_attention"](*t, heads),
        "triton": lambda *t: group_attention(*t, heads, impl="triton"),
    })


# ----------------------------------------------------------------------------------------------- timing
def _step_fns(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor]) -> dict[str, tuple[Callable, Callable | None]]:
    """(timed function, untimed setup) per mode; backward times the backward of a fresh forward each call."""
    leaves = [t for t in inputs if t.requires_grad]

    def forward():
        return fn(*inputs).float().sum()

    def backward(loss):
        return torch.autograd.grad(loss, leaves)

    def full():
        return torch.autograd.grad(forward(), leaves)

    return {"forward": (forward, None), "backward": (backward, forward), "full": (full, None)}


def run_case(case: Case, impls: list[str], device: torch.device, warmup: int, repeats: int) -> list[dict]:
    rows = []
    env = harness.environment(device)
    for impl in impls:
        fns = _step_fns(case.impls[impl], case.make())
        for mode in MODES:
            fn, setup = fns[mode]
            m = harness.measure(fn, device, warmup=warmup, repeats=repeats, setup=setup)
            rows.append({"op": case.op, "impl": impl, "mode": mode, "variant": case.variant, "x": case.x,
                         "size": case.size, "median_ms": round(m.median_ms, 4), "p20_ms": round(m.p20_ms, 4),
                         "p80_ms": round(m.p80_ms, 4), "peak_bytes": m.peak_bytes, "repeats": m.repeats, **env})
            print(f"{case.op:16s} {case.size:24s} {impl:9s} {mode:8s} {m.median_ms:10.3f} ms "
                  f"(p20 {m.p20_ms:.3f}, p80 {m.p80_ms:.3f})  peak {m.peak_bytes / 2**20:8.1f} MiB", flush=True)
    return rows


def cases(quick: bool, device: torch.device, dtype: torch.dtype) -> list[Case]:
    """The problems in run order: the sizes with targets (contrastive B = 256, the model's LSA) first."""
    if quick:
        return [contrastive_case(2, 16, 32, device, dtype), group_attention_case(3, 2, 5, 32, 4, device, dtype)]
    batches = (256, 64, 1024, 4096) if device.type == "cuda" else (256, 64, 1024)
    shapes = [(1, 768), (64, 768), (1, 192), (1, 384), (64, 192), (64, 384)]
    return ([contrastive_case(12, B, 512, device, dtype) for B in batches]
            + [group_attention_case(3, M, 5, D, 8, device, dtype) for M, D in shapes])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 1 warm-up, 1 repeat (a smoke test)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder of ops.json/.csv/.png")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 10, quick 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3, quick 1)")
    parser.add_argument("--impls", default=None, help=f"comma list out of {','.join(IMPLS)} "
                        "(default: all on CUDA, all but triton on CPU)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    impls = args.impls.split(",") if args.impls else [i for i in IMPLS if device.type == "cuda" or i != "triton"]
    unknown = set(impls) - set(IMPLS)
    if unknown:
        parser.error(f"unknown --impls {sorted(unknown)}; choose from {IMPLS}")
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 10)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for case in cases(args.quick, device, dtype):  # results are written per problem: a timeout keeps what finished
        case_rows = run_case(case, impls, device, warmup, repeats)
        rows += case_rows
        json_path, csv_path = harness.append_rows(case_rows, args.out, "ops")
        png = harness.plot_rows(rows, Path(args.out) / "ops.png", x="x", y="median_ms",
                                panel=("op", "variant", "mode"), series="impl", xlabel=X_LABEL,
                                title=f"maavt_fast ops on {rows[0]['device']}")
    print(f"wrote {json_path}, {csv_path}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
