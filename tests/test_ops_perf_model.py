"""docs/performance.md shows the table the performance model computes, and the model's bounds hold."""
from __future__ import annotations

from pathlib import Path

from maavt_fast.kernels import perf_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def test_doc_table_matches_the_model():
    assert perf_model.table() in DOC.read_text(), "regenerate with: python -m maavt_fast.kernels.perf_model"


def test_bounds_follow_the_problem_size():
    assert perf_model.contrastive_forward(256).bound() == "launch"
    assert perf_model.contrastive_backward(16384).bound() == "compute"
    assert perf_model.contrastive_eager(16384).bound() == "memory"
    assert perf_model.group_attention_step().bound() == "launch"


def test_backward_recompute_factor():
    """Halving the gradient chunk adds one more recompute of the logits (2 B² P L FLOPs per program kind)."""
    B, L, P = 1024, perf_model.L, perf_model.P
    extra = perf_model.contrastive_backward(B, chunk=P // 2).flops - perf_model.contrastive_backward(B, chunk=P).flops
    assert extra == 2 * 2 * L * B * B * P
