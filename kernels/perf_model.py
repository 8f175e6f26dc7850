"""Roofline model of the fused kernels on an H200 with bf16 inputs, next to the eager bf16 formula.

Each estimate counts the FLOPs of the tensor-core dots, the HBM bytes a call must move (inputs,
outputs, fp32 scratch; tile re-reads are assumed to hit L2) and the launches. Predicted time =
max(FLOPs / peak, bytes / bandwidth) + launches x launch latency; the bound is the largest term.
The numbers are a model to read the first GPU run against, not measurements.

    python -m maavt_fast.kernels.perf_model      prints the table of docs/performance.md
"""
from __future__ import annotations

import dataclasses

from maavt_fast.kernels import contrastive


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    tensor_flops: float  # dense bf16 tensor-core FLOP/s
    bandwidth: float  # HBM bytes/s
    launch_s: float  # latency of one dependent kernel launch


H200 = Device("H200 SXM", tensor_flops=989e12, bandwidth=4.8e12, launch_s=4e-6)
BATCHES = (256, 4096, 16384)
L, P = 12, 512  # contrastive: blocks and projection width of the model
G, M, N, D = 3, 1, 5, 768  # group attention as the model calls it (learnable tokens: independent of B)
BF16, FP32 = 2, 4
# Eager formula: the (L, B, B) logits pass HBM as bf16 (write, read), fp32 (write, read), two log-softmax
# outputs and their gradients (write, read each), the logits' gradient (write fp32, read, bf16 write, read).
EAGER_BYTES_PER_LOGIT = 2 * BF16 + 2 * FP32 + 4 * 2 * FP32 + 2 * FP32 + 2 * BF16
EAGER_LAUNCHES = 30  # normalise, bmm, casts, two cross-entropies, their backward, two bmm, per-block sums


@dataclasses.dataclass(frozen=True)
class Estimate:
    flops: float
    bytes: float
    launches: int

    def seconds(self, device: Device = H200) -> float:
        return max(self.flops / device.tensor_flops, self.bytes / device.bandwidth) + self.launches * device.launch_s

    def bound(self, device: Device = H200) -> str:
        terms = {"compute": self.flops / device.tensor_flops, "memory": self.bytes / device.bandwidth,
                 "launch": self.launches * device.launch_s}
        return max(terms, key=terms.get)


def contrastive_forward(B: int) -> Estimate:
    """Two logit dots per tile pair (S1 and S2 = S1ᵀ are both computed); reads a, v, writes lse1/lse2/losses."""
    return Estimate(flops=2 * 2 * L * B * B * P, bytes=2 * L * B * P * BF16 + 3 * L * B * FP32, launches=2)


def contrastive_backward(B: int, chunk: int = max(c.features for c in contrastive.BACKWARD_CONFIGS[BF16])) -> Estimate:
    """Row programs (dv) and column programs (da) per chunk of `chunk` gradient features each recompute their
    tiles of S1 over all P features (factor P / chunk) and add one gradient dot; da, dv are written once."""
    flops = 2 * (2 * L * B * B * P * (P / chunk) + 2 * L * B * B * P)
    return Estimate(flops=flops, bytes=2 * L * B * P * (BF16 + BF16) + L * B * FP32, launches=3)


def contrastive_eager(B: int) -> Estimate:
    """The eager bf16 formula, forward and backward: one logit bmm, two gradient bmms, logits through HBM."""
    return Estimate(flops=3 * 2 * L * B * B * P, bytes=L * B * B * EAGER_BYTES_PER_LOGIT + 6 * L * B * P * BF16,
                    launches=EAGER_LAUNCHES)


def group_attention_step() -> Estimate:
    """Forward (1 launch) and backward (2 launches): the weights dominate the bytes at M = 1."""
    tokens = G * M * N
    weights = G * 4 * D * D * BF16
    flops = 2 * tokens * 4 * D * D * 3  # qkv + proj forward, their input and weight gradients
    scratch = tokens * (D + 3 * D) * FP32 * 2  # o and dqkv, written and read
    return Estimate(flops=flops, bytes=3 * weights + scratch, launches=3)


def table(device: Device = H200) -> str:
    """Markdown tables: the contrastive kernels per B beside the eager formula, then group attention."""
    lines = ["| B | fwd GFLOP / MB | fwd bound | fwd µs | bwd GFLOP / MB | bwd bound | bwd µs | fused fwd+bwd µs "
             "| eager bf16 fwd+bwd µs (bound) |", "|---" * 9 + "|"]
    for B in BATCHES:
        fwd, bwd, eager = contrastive_forward(B), contrastive_backward(B), contrastive_eager(B)
        cells = [str(B)]
        for est in (fwd, bwd):
            cells += [f"{est.flops / 1e9:.1f} / {est.bytes / 1e6:.1f}", est.bound(device),
                      f"{est.seconds(device) * 1e6:.0f}"]
        cells += [f"{(fwd.seconds(device) + bwd.seconds(device)) * 1e6:.0f}",
                  f"{eager.seconds(device) * 1e6:.0f} ({eager.bound(device)})"]
        lines.append("| " + " | ".join(cells) + " |")
    ga = group_attention_step()
    lines += ["", "| group attention (G=3, M=1, n=5, D=768) | GFLOP | MB | launches | bound | predicted µs |",
              "|---" * 6 + "|",
              f"| forward + backward, any B | {ga.flops / 1e9:.2f} | {ga.bytes / 1e6:.1f} | {ga.launches} | "
              f"{ga.bound(device)} | {ga.seconds(device) * 1e6:.0f} |"]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
