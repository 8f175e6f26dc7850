"""`python -m benchmarks.ops --quick` writes well-formed rows (every column) and the plot; the harness pieces.

No timing is asserted anywhere: speed lives in the benchmark results, not in tests.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import harness, ops

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick_rows(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A quick CPU run of the default providers (triton left out: the interpreter is no timing, and slow)."""
    out = tmp_path_factory.mktemp("ops")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.ops", "--quick", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads((out / "ops.json").read_text())


def test_quick_rows_cover_every_provider_mode_and_shape(quick_rows):
    _, rows = quick_rows
    shapes = {op: ops.SIZES["quick"].shapes(op) for op in ops.DIMS}
    expected = {(op, provider, mode, tuple(sorted(dims.items())))
                for op, provider in [(op, p) for op in ("contrastive", "sigmoid")
                                     for p in ("reference", "reference-compiled", "openclip")]
                + [("group_attention", p) for p in ("reference", "reference-compiled", "per-group")]
                for mode in ops.MODES for dims in shapes[op]}
    got = [(r["op"], r["provider"], r["mode"], tuple(sorted((d, r[d]) for d in ops.DIMS[r["op"]]))) for r in rows]
    assert len(got) == len(expected) and set(got) == expected


def test_sigmoid_rows_are_timed_with_the_loss_dimensions_only(quick_rows):
    _, rows = quick_rows
    sigmoid = [r for r in rows if r["op"] == "sigmoid"]
    assert {r["provider"] for r in sigmoid} == {"reference", "reference-compiled", "openclip"}
    assert {(r["L"], r["B"], r["P"]) for r in sigmoid} == {(2, 16, 32), (2, 8, 32)}
    for r in sigmoid:
        assert r["error"] == "" and r["p50_ms"] > 0 and r["G"] is None and r["heads"] is None


@pytest.mark.parametrize("op,providers", [("contrastive", ("reference", "openclip")),
                                          ("sigmoid", ("reference", "openclip")),
                                          ("group_attention", ("reference", "per-group"))])
def test_providers_of_an_op_compute_the_same_value_and_gradients(op, providers):
    """The rows of one op compare like with like: every provider computes the same loss or output."""
    dims = ops.SIZES["quick"].base[op]
    results = []
    for provider in providers:
        inputs = ops.INPUTS[op](**dims, device=torch.device("cpu"), dtype=torch.float32)
        out = ops.provider_fn(op, provider, dims.get("heads"))(*inputs)
        leaves = [t for t in inputs if t.requires_grad]
        results.append((out.detach(), torch.autograd.grad(out.sum(), leaves)))
    (out0, grads0), (out1, grads1) = results
    torch.testing.assert_close(out1, out0)
    for g1, g0 in zip(grads1, grads0, strict=True):
        torch.testing.assert_close(g1, g0)


def test_quick_rows_have_every_column_filled(quick_rows):
    _, rows = quick_rows
    for r in rows:
        assert tuple(r) == ops.COLUMNS
        assert r["error"] == "", r
        assert 0 < r["p20_ms"] <= r["p50_ms"] <= r["p80_ms"] and r["peak_mb"] >= 0
        assert r["timer"].startswith("torch.utils.benchmark.adaptive_autorange(")
        assert r["dtype"] == "float32" and r["config"] == "" and r["device_type"] == "cpu"
        other = {d for dims in ops.DIMS.values() for d in dims} - set(ops.DIMS[r["op"]])
        assert all(isinstance(r[d], int) for d in ops.DIMS[r["op"]]) and all(r[d] is None for d in other)
        for key in ("device", "torch", "triton", "commit", "date", "run"):
            assert isinstance(r[key], str) and r[key], key
        assert r["threads"] >= 1 and r["load_1min"] >= 0 and r["run"] == rows[0]["run"]


def test_quick_csv_matches_json_and_plot_is_written(quick_rows):
    out, rows = quick_rows
    with (out / "ops.csv").open() as f:
        assert list(csv.DictReader(f)) == [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows]
    assert (out / "ops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_panels_hold_the_rows_at_the_base_of_the_other_dimensions():
    sizes = ops.SIZES["cpu"]
    rows = [dict.fromkeys(ops.COLUMNS) | {"op": "contrastive", "mode": m} | dims
            for dims in sizes.shapes("contrastive") for m in ops.MODES]
    panels = {(title.split()[1], dim): mine for title, dim, mine in ops.sweep_panels(rows, sizes)
              if title.startswith("contrastive")}
    assert set(panels) == {(m, d) for m in ops.MODES for d in ("B", "P")}
    assert sorted(r["B"] for r in panels["fwd", "B"]) == list(sizes.sweeps["contrastive"]["B"])
    assert {r["B"] for r in panels["bwd", "P"]} == {256} and len(panels["bwd", "P"]) == 3
    assert sizes.shapes("contrastive")[0] == ops.BASE["contrastive"]  # the base (the targets' shape) first


def test_default_providers():
    assert ops.default_providers(torch.device("cuda"), quick=False) == list(ops.PROVIDERS)
    assert "triton" not in ops.default_providers(torch.device("cpu"), quick=False)


def test_time_quantiles_on_cpu_uses_torch_benchmark():
    x = torch.randn(64, 64)
    q = harness.time_quantiles(lambda: x @ x, torch.device("cpu"), budget_s=0.05)
    assert 0 < q.p20_ms <= q.p50_ms <= q.p80_ms and "adaptive_autorange" in q.timer


def test_environment_names_the_device_model_and_threads():
    env = harness.environment(torch.device("cpu"))
    assert env["device_type"] == "cpu" and env["device"] and env["threads"] == torch.get_num_threads()


def test_append_rows_keeps_earlier_runs(tmp_path):
    rows = [{"op": "a", "p50_ms": 1.5}, {"op": "b", "p50_ms": 2.0}]
    harness.append_rows(rows, tmp_path, "x")
    json_path, csv_path = harness.append_rows(rows[:1], tmp_path, "x")
    assert json.loads(json_path.read_text()) == rows + rows[:1]
    assert csv_path.read_text().splitlines() == ["op,p50_ms", "a,1.5", "b,2.0", "a,1.5"]


@pytest.mark.parametrize("q,expected", [(0.0, 1.0), (0.5, 2.5), (0.2, 1.6), (1.0, 4.0)])
def test_percentile(q, expected):
    assert harness.percentile([4.0, 1.0, 3.0, 2.0], q) == pytest.approx(expected)


def test_measure_counts_calls_and_reports_memory():
    calls = []
    m = harness.measure(lambda: calls.append(torch.ones(1 << 20)), torch.device("cpu"), warmup=2, repeats=3)
    assert len(calls) == 2 + 3 + 1  # warm-up, timed, one more for the peak memory
    assert m.repeats == 3 and m.peak_bytes >= 0


def test_report_renders_the_newest_run_and_lists_gpu_targets_as_not_measured(quick_rows):
    from benchmarks import report

    out, rows = quick_rows
    stale = [r | {"run": "19990101T000000Z", "p50_ms": 123456.0} for r in rows]
    old_schema = [{"op": "contrastive", "impl": "release", "median_ms": 654321.0, "device": "cpu (2 threads)"}]
    (out / "ops.json").write_text(json.dumps(old_schema + stale + rows))
    report.main(["--results", str(out), "--out", str(out / "RESULTS.md")])
    md = (out / "RESULTS.md").read_text()
    assert "## Fused ops" in md and f"Run `{rows[0]['run']}`" in md and "](ops.png)" in md
    assert "123456" not in md and "654321" not in md and "19990101" not in md  # only the newest run
    assert "| contrastive | L=2, B=16, P=32 | fwd+bwd |" in md
    from maavt_fast.kernels.perf_model import BATCHES

    # the targets, and the measured columns (triton, openclip) of the performance-model table
    assert md.count("not measured (no GPU)") == len(report.OPS_TARGETS) + len(report.BIG_B) + 2 * len(BATCHES)


def test_gpu_targets_are_checked_on_cuda_rows():
    from benchmarks import report

    def row(op, provider, ms, error="", **dims):
        base = {"contrastive": {"L": 12, "B": 256, "P": 512},
                "group_attention": {"G": 3, "M": 64, "n": 5, "D": 768, "heads": 8}}[op]
        return dict.fromkeys(ops.COLUMNS) | base | dims | {
            "op": op, "provider": provider, "mode": "fwd+bwd", "p50_ms": ms, "peak_mb": 10.0, "error": error}

    cuda = [row("contrastive", "triton", 1.0), row("contrastive", "reference", 4.0),
            row("contrastive", "reference-compiled", 1.2), row("group_attention", "triton", 1.0),
            row("group_attention", "reference", 3.5), row("contrastive", "triton", 9.0, B=16384),
            row("contrastive", "reference", None, "OutOfMemoryError: CUDA out of memory", B=16384)]
    text = report.ops_targets(cuda)
    assert "4.00x: met" in text and "1.20x: **missed**" in text and "3.50x: met" in text
    assert "triton: 10 MiB / reference: OutOfMemoryError" in text
    model = report.model_check(cuda + [row("contrastive", "openclip", 2.5)])
    assert "| 256 |" in model and "| 1000 |" in model and "| 2500 |" in model  # measured µs beside predictions
    assert "| 16384 |" in model and "| 9000 |" in model and "| not run |" in model  # 4096 was not run


def test_per_config_rows_time_every_contrastive_tile_configuration():
    """With per_config, the triton provider gets one row set per tile configuration of the dtype (kernel pinned),
    labelled like `fwd 32x32x32 w8 s2`, plus the autotuned rows (empty label); every row well-formed and finite.
    Under TRITON_INTERPRET=1 the kernels run on the CPU: this checks the rows, not the speed."""
    from maavt_fast.kernels import contrastive as kernel
    from maavt_fast.kernels._launch import describe
    from maavt_fast.ops._dispatch import kernel_device

    device = kernel_device()
    if device is None:
        pytest.fail("the contrastive kernels cannot run here (no CUDA and TRITON_INTERPRET unset)")
    dims = {"L": 1, "B": 8, "P": 16}
    rows = ops.run_shape("contrastive", dims, ["triton"], device, torch.float32, 0.001, {"device": "test"},
                         per_config=True)
    labels = {r["config"] for r in rows}
    size = torch.empty((), dtype=torch.float32).element_size()
    assert labels == {""} | {f"fwd {describe(c)}" for c in kernel.FORWARD_CONFIGS[size]} \
        | {f"bwd {describe(c)}" for c in kernel.BACKWARD_CONFIGS[size]}
    assert len(rows) == len(labels) * len(ops.MODES)
    for row in rows:
        assert set(row) == set(ops.COLUMNS) and row["error"] == "" and row["p50_ms"] > 0
