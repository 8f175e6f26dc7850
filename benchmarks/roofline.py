"""Roofline numbers for a training step: counted FLOPs, the measured GEMM ceiling, attainable fraction, MFU.

FLOPs are counted with `torch.utils.flop_counter` over one forward + backward of the fast model with
the explicit ("math") attention backend, so attention matmuls are counted on every device (the CPU
flash-attention op has no FLOP formula). Frozen weights get no weight gradients, so the backward
counts only what actually runs. The ceiling is a large square matmul in the row's dtype, timed in
the same run on the same machine.
"""
from __future__ import annotations

import copy
import dataclasses

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import harness

# Published dense peaks in TFLOP/s (vendor datasheets, SXM parts) used for MFU; fp32 = plain fp32 (no TF32).
PUBLISHED_PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "fp32": 66.9},
    "H100": {"bf16": 989.4, "fp32": 66.9},
}


def published_peak(device_name: str, precision: str) -> float | None:
    """The datasheet peak (TFLOP/s) for a GPU name such as 'NVIDIA H200', or None when unknown."""
    for key, peaks in PUBLISHED_PEAK_TFLOPS.items():
        if key in device_name:
            return peaks.get(precision)
    return None


def count_step_flops(model: torch.nn.Module, audio: torch.Tensor, image: torch.Tensor, label: torch.Tensor) -> int:
    """FLOPs of one training forward + backward (loss included) of a copy of `model` using math attention."""
    counted = copy.deepcopy(model)
    counted.cfg = dataclasses.replace(counted.cfg, attention="math")
    counted.train()
    with FlopCounterMode(display=False) as counter:
        counted(audio, image, label).loss.backward()
    return int(counter.get_total_flops())


def measure_gemm_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Throughput (TFLOP/s) of an `n x n @ n x n` matmul in `dtype`: the median of `repeats` timed calls."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    m = harness.measure(lambda: torch.mm(a, b), device, warmup=2, repeats=repeats)
    return 2 * n ** 3 / (m.median_ms * 1e-3) / 1e12
