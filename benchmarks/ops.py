"""Benchmark of the fused ops: every provider side by side, forward / backward / both, time and peak memory.

Providers (one run measures them all on the same inputs):
  reference           the batched PyTorch reference in `maavt_fast.ops` (eager)
  reference-compiled  torch.compile of that reference
  triton              the fused Triton kernels (CUDA; on CPU only under TRITON_INTERPRET=1 with --quick)
  openclip            contrastive: the loss OpenCLIP users write today (normalise, `logit_scale * a @ v.T`,
                      two cross-entropies), once per block; sigmoid: OpenCLIP's SigLipLoss formula written out
                      (normalise, `logit_scale * v @ a.T + logit_bias`, -logsigmoid of the ±1 labels), once per block
  per-group           group attention: what the release runs, one timm-style attention per group
Modes: fwd (forward, recording autograd as in training), bwd (backward of one kept forward graph, again
and again: `retain_graph=True`, so torch.compile's donated buffers are off here), fwd+bwd.
Rows per tile configuration (`config`, e.g. "fwd 128x64x64 w8 s3"; empty: autotuned): the contrastive Triton
kernels with one kernel pinned to each configuration of its autotune set (`--per-config`, default on CUDA,
at the base shapes).
Timing: `triton.testing.do_bench` on CUDA, `torch.utils.benchmark` adaptive autorange on CPU
(`benchmarks.harness.time_quantiles`); p20 / p50 / p80 ms and the peak memory one call adds.

Sizes: one panel per swept dimension around a base shape (contrastive and sigmoid L = 12, B = 256, P = 512,
sigmoid on CUDA B = 1024, its target's batch; group attention G = 3, M = 64, n = 5, D = 768, 8 heads: the
model's LSA). GPU rows are bf16, CPU rows fp32.
The sigmoid loss's scale and bias are learnable `(L,)` tensors (as in the model), differentiated too.

    python -m benchmarks.ops [--quick] [--out DIR] [--providers a,b] [--[no-]per-config] [--budget SECONDS]

Rows (schema `COLUMNS`) are appended to DIR/ops.json and DIR/ops.csv after each shape (a timeout keeps the
finished ones; the base shapes run first), the plot of this run goes to DIR/ops.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch._functorch import config as functorch_config

from benchmarks import harness
from maavt_fast.kernels import contrastive as contrastive_kernel
from maavt_fast.kernels._launch import describe, pinned
from maavt_fast.ops import (blockwise_contrastive_loss, blockwise_sigmoid_loss, blockwise_sigmoid_loss_reference,
                            group_attention, group_attention_reference)
from maavt_fast.ops._dispatch import kernel_device
from maavt_fast.ops.contrastive import blockwise_contrastive_loss_reference
from maavt_fast.ops.release import release_group_attention

PROVIDERS = ("reference", "reference-compiled", "triton", "openclip", "per-group")
MODES = ("fwd", "bwd", "fwd+bwd")
DIMS = {"contrastive": ("L", "B", "P"), "sigmoid": ("L", "B", "P"), "group_attention": ("G", "M", "n", "D", "heads")}
# Every row has exactly these columns (CSV-safe); a dimension another op has is empty (None). `config` labels a
# Triton tile configuration when a kernel is timed once per config; empty for one row per provider.
COLUMNS = ("op", "provider", "config", "mode", "dtype", *dict.fromkeys(d for dims in DIMS.values() for d in dims),
           "p20_ms", "p50_ms", "p80_ms", "peak_mb", "timer", "error",
           "device", "device_type", "threads", "torch", "triton", "commit", "date", "run", "load_1min")
TEMPERATURE = 0.07
MIN_SAMPLES = 5  # the timing budget stretches to about this many calls when one call is slower than budget / 5


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The base shape of each op and the values swept per dimension (the others stay at the base)."""
    base: dict[str, dict[str, int]]
    sweeps: dict[str, dict[str, tuple[int, ...]]]

    def shapes(self, op: str) -> list[dict[str, int]]:
        """Base first, then each sweep's other points, without repeats."""
        out = [self.base[op]]
        for dim, values in self.sweeps[op].items():
            out += [self.base[op] | {dim: v} for v in values if self.base[op] | {dim: v} not in out]
        return out


LOSS_BASE = {"L": 12, "B": 256, "P": 512}
BASE = {"contrastive": LOSS_BASE, "sigmoid": LOSS_BASE,
        "group_attention": {"G": 3, "M": 64, "n": 5, "D": 768, "heads": 8}}
QUICK_LOSS = {"L": 2, "B": 16, "P": 32}
SIZES = {
    "cuda": Sizes(BASE | {"sigmoid": LOSS_BASE | {"B": 1024}},
                  {"contrastive": {"B": (64, 256, 1024, 4096, 16384), "P": (128, 256, 512, 1024)},
                   "sigmoid": {"B": (64, 256, 1024, 4096, 16384, 32768), "P": (128, 256, 512, 1024)},
                   "group_attention": {"D": (192, 384, 768), "M": (1, 16, 64, 256)}}),
    "cpu": Sizes(BASE, {"contrastive": {"B": (64, 256, 512), "P": (128, 512, 1024)},
                        "sigmoid": {"B": (64, 256, 512), "P": (128, 512, 1024)},
                        "group_attention": {"D": (192, 384, 768), "M": (1, 16, 64)}}),
    "quick": Sizes({"contrastive": QUICK_LOSS, "sigmoid": QUICK_LOSS,
                    "group_attention": {"G": 3, "M": 2, "n": 5, "D": 32, "heads": 4}},
                   {"contrastive": {"B": (8, 16)}, "sigmoid": {"B": (8, 16)}, "group_attention": {"D": (32,)}}),
}


# ----------------------------------------------------------------------------------------------- contrastive
def contrastive_openclip(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """OpenCLIP's ClipLoss as users write it, once per block of (B, P) features (background rows dropped)."""
    logit_scale = 1.0 / TEMPERATURE
    total = audio.new_zeros((), dtype=torch.float32)
    for a, v in zip(audio, visual):
        image_features, text_features = F.normalize(v[keep], dim=-1), F.normalize(a[keep], dim=-1)
        logits_per_image = logit_scale * image_features @ text_features.T
        logits_per_text = logits_per_image.T
        labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
        total = total + (F.cross_entropy(logits_per_image.float(), labels)
                         + F.cross_entropy(logits_per_text.float(), labels)) / 2
    return total / audio.shape[0]


def contrastive_inputs(L: int, B: int, P: int, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(B * P)
    audio, visual = (torch.randn(L, B, P, generator=g).to(device, dtype).requires_grad_() for _ in range(2))
    return [audio, visual, torch.rand(B, generator=g).to(device) > 0.1]


# ----------------------------------------------------------------------------------------------- sigmoid
def sigmoid_openclip(audio: torch.Tensor, visual: torch.Tensor, keep: torch.Tensor, logit_scale: torch.Tensor,
                     logit_bias: torch.Tensor) -> torch.Tensor:
    """OpenCLIP's SigLipLoss as users write it, once per block of (B, P) features (background rows dropped);
    logit_scale (the multiplier) and logit_bias `(L,)`."""
    total = audio.new_zeros((), dtype=torch.float32)
    for a, v, scale, bias in zip(audio, visual, logit_scale, logit_bias):
        image_features, text_features = F.normalize(v[keep], dim=-1), F.normalize(a[keep], dim=-1)
        logits = scale * image_features @ text_features.T + bias
        n = logits.shape[0]
        labels = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1
        total = total - F.logsigmoid(labels * logits).float().sum() / n
    return total / audio.shape[0]


def sigmoid_inputs(L: int, B: int, P: int, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    """contrastive_inputs + SigLIP's initial scale 10 and bias -10 per block, learnable (fp32, as in the model)."""
    scale, bias = (torch.full((L,), v, device=device).requires_grad_() for v in (10.0, -10.0))
    return [*contrastive_inputs(L, B, P, device, dtype), scale, bias]


# ----------------------------------------------------------------------------------------------- group attention
def group_attention_inputs(G: int, M: int, n: int, D: int, heads: int, device: torch.device,
                           dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(M * D)
    shapes = [(G, M, n, D), (G, 3 * D, D), (G, 3 * D), (G, D, D), (G, D)]
    return [(torch.randn(s, generator=g) * D ** -0.5).to(device, dtype).requires_grad_() for s in shapes]


# One compiled reference per op for all sizes: after the first size torch.compile recompiles once with
# dynamic shapes instead of once per size (compilation dominates a GPU run). bwd differentiates one kept
# graph repeatedly (retain_graph), which compiled backwards allow only without donated buffers.
functorch_config.donated_buffer = False
_COMPILED = {"contrastive": torch.compile(blockwise_contrastive_loss_reference),
             "sigmoid": torch.compile(blockwise_sigmoid_loss_reference),
             "group_attention": torch.compile(group_attention_reference)}
INPUTS = {"contrastive": contrastive_inputs, "sigmoid": sigmoid_inputs, "group_attention": group_attention_inputs}


def provider_fn(op: str, provider: str, heads: int | None) -> Callable[..., torch.Tensor] | None:
    """The callable a provider runs on the op's inputs, or None where the provider does not apply to the op."""
    if op == "contrastive":
        return {"reference": lambda a, v, k: blockwise_contrastive_loss(a, v, k, temperature=TEMPERATURE, impl="torch"),
                "reference-compiled": lambda a, v, k: _COMPILED[op](a, v, k, temperature=TEMPERATURE),
                "triton": lambda a, v, k: blockwise_contrastive_loss(a, v, k, temperature=TEMPERATURE, impl="triton"),
                "openclip": contrastive_openclip}.get(provider)
    if op == "sigmoid":
        return {"reference": lambda *t: blockwise_sigmoid_loss(*t, impl="torch"),
                "reference-compiled": lambda *t: _COMPILED[op](*t),
                "triton": lambda *t: blockwise_sigmoid_loss(*t, impl="triton"),
                "openclip": sigmoid_openclip}.get(provider)
    return {"reference": lambda *t: group_attention(*t, heads, impl="torch"),
            "reference-compiled": lambda *t: _COMPILED[op](*t, heads),
            "triton": lambda *t: group_attention(*t, heads, impl="triton"),
            "per-group": lambda *t: release_group_attention(*t, heads)}.get(provider)


# ----------------------------------------------------------------------------------------------- timing
def mode_fns(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor]) -> dict[str, Callable[[], object]]:
    """The timed call per mode; bwd differentiates one kept forward graph again and again (retain_graph)."""
    leaves = [t for t in inputs if t.requires_grad]

    def fwd():
        return fn(*inputs).float().sum()

    kept = fwd()
    return {"fwd": fwd, "bwd": lambda: torch.autograd.grad(kept, leaves, retain_graph=True),
            "fwd+bwd": lambda: torch.autograd.grad(fwd(), leaves)}


def failed(e: Exception) -> dict:
    """The timing columns of a (provider, mode) that could not run, e.g. out of memory."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"p20_ms": None, "p50_ms": None, "p80_ms": None, "peak_mb": None, "timer": "",
            "error": f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"}


def measure_row(call: Callable[[], object], device: torch.device, budget_s: float) -> dict:
    """Timing and peak-memory columns of one (provider, mode); a failure is recorded, not raised."""
    try:
        call()  # warm-up: compilation, autotuning, caches
        t0 = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        once = time.perf_counter() - t0
        q = harness.time_quantiles(call, device, max(budget_s, MIN_SAMPLES * once))
        peak = harness.peak_bytes(call, device)
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError included: one size too large must not lose the others
        return failed(e)
    return {"p20_ms": round(q.p20_ms, 5), "p50_ms": round(q.p50_ms, 5), "p80_ms": round(q.p80_ms, 5),
            "peak_mb": round(peak / 2 ** 20, 3), "timer": q.timer, "error": ""}


def tile_variants(op: str, provider: str, dtype: torch.dtype, per_config: bool) -> list[tuple[str, dict]]:
    """(config label, pinned tile configs) to time: the autotuned kernel ("") and, with `per_config`, the
    contrastive Triton kernels once per tile configuration of the dtype (forward and backward pinned apart)."""
    variants: list[tuple[str, dict]] = [("", {})]
    if per_config and op == "contrastive" and provider == "triton":
        size = torch.empty((), dtype=dtype).element_size()
        variants += [(f"fwd {describe(c)}", {"contrastive_fwd": c}) for c in contrastive_kernel.FORWARD_CONFIGS[size]]
        variants += [(f"bwd {describe(c)}", {"contrastive_bwd": c}) for c in contrastive_kernel.BACKWARD_CONFIGS[size]]
    return variants


def run_shape(op: str, dims: dict[str, int], providers: list[str], device: torch.device, dtype: torch.dtype,
              budget_s: float, context: dict, per_config: bool = False) -> list[dict]:
    rows = []
    make = INPUTS[op]
    for provider in providers:
        fn = provider_fn(op, provider, dims.get("heads"))
        if fn is None:
            continue
        for config, pins in tile_variants(op, provider, dtype, per_config):
            with pinned(**pins):
                try:
                    fns = mode_fns(fn, make(**dims, device=device, dtype=dtype))
                except RuntimeError as e:  # the kept forward graph of bwd already failed
                    fns = {mode: e for mode in MODES}
                for mode in MODES:
                    call = fns[mode]
                    measured = failed(call) if isinstance(call, Exception) else measure_row(call, device, budget_s)
                    row = dict.fromkeys(COLUMNS) | context | dims | measured | {
                        "op": op, "provider": provider, "config": config, "mode": mode,
                        "dtype": str(dtype).removeprefix("torch."), "load_1min": round(os.getloadavg()[0], 2)}
                    rows.append(row)
                    shape = ",".join(f"{k}={v}" for k, v in dims.items())
                    timing = (f"{row['p50_ms']:10.4f} ms (p20 {row['p20_ms']:.4f}, p80 {row['p80_ms']:.4f}) "
                              f"peak {row['peak_mb']:9.2f} MiB") if not row["error"] else row["error"]
                    print(f"{op:16s} {shape:28s} {provider:19s} {config:20s} {mode:8s} {timing}", flush=True)
    return rows


def sweep_panels(rows: list[dict], sizes: Sizes) -> list[tuple[str, str, list[dict]]]:
    """(title, dimension, rows) per op, swept dimension and mode: the rows whose other dimensions are at the base."""
    panels = []
    for op, sweeps in sizes.sweeps.items():
        for dim in sweeps:
            fixed = {k: v for k, v in sizes.base[op].items() if k != dim}
            at_base = ", ".join(f"{k}={v}" for k, v in fixed.items())
            for mode in MODES:
                mine = [r for r in rows if r["op"] == op and r["mode"] == mode
                        and all(r[k] == v for k, v in fixed.items())]
                panels.append((f"{op} {mode}\n({at_base})", dim, mine))
    return panels


def default_providers(device: torch.device, quick: bool) -> list[str]:
    """All on CUDA; on CPU all but triton, which only --quick runs there (interpreted: a smoke test, not a timing)."""
    triton = device.type == "cuda" or (quick and kernel_device() == device)
    return [p for p in PROVIDERS if p != "triton" or triton]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, short timing: checks the rows, not speed")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                        help="folder of ops.json / ops.csv / ops.png")
    parser.add_argument("--providers", default=None, help=f"comma list out of {','.join(PROVIDERS)} "
                        "(default: all on CUDA, all but triton on CPU)")
    parser.add_argument("--per-config", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the contrastive Triton kernels once per tile configuration at the base shapes "
                        "(default: on CUDA)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timing per (shape, provider, mode) (default 0.5 CUDA, 1.5 CPU, 0.02 quick)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    providers = args.providers.split(",") if args.providers else default_providers(device, args.quick)
    unknown = set(providers) - set(PROVIDERS)
    if unknown:
        parser.error(f"unknown --providers {sorted(unknown)}; choose from {', '.join(PROVIDERS)}")
    budget = args.budget if args.budget is not None else 0.02 if args.quick else 0.5 if device.type == "cuda" else 1.5
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sizes = SIZES["quick" if args.quick else device.type]
    context = harness.environment(device) | {"run": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())}
    print(f"ops on {context['device']} ({context['threads']} threads), {dtype}, providers {', '.join(providers)}")
    rows: list[dict] = []
    shapes = [(op, dims) for op in sizes.base for dims in sizes.shapes(op)]
    shapes.sort(key=lambda s: s[1] != sizes.base[s[0]])  # the base shapes (with the targets) first
    per_config = device.type == "cuda" if args.per_config is None else args.per_config
    for op, dims in shapes:
        at_base = dims == sizes.base[op]
        shape_rows = run_shape(op, dims, providers, device, dtype, budget, context, per_config and at_base)
        rows += shape_rows
        json_path, csv_path = harness.append_rows(shape_rows, args.out, "ops")
    png = harness.plot_sweeps(rows, Path(args.out) / "ops.png", sweep_panels(rows, sizes), ("provider", "config"),
                              title=f"maavt_fast ops on {context['device']}, {str(dtype).removeprefix('torch.')}")
    print(f"wrote {json_path}, {csv_path}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
