"""benchmarks/e2e.py --quick (with --profile), the report and gpu_check.sh's dry run write well-formed output.

No timing is asserted: speed lives in the benchmark results, not in tests.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import e2e, report

ROOT = Path(__file__).resolve().parent.parent

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """Quick CPU runs of the reference and fast-eager rows (fresh process each, profiled; then interleaved in one
    process), rendered.

    fast-compiled is left out here: its cold compile alone takes minutes on 2 cores (the compiled
    step has its own tests); `build_cases` below checks that a full run includes it."""
    out = tmp_path_factory.mktemp("e2e")
    argv = ["--quick", "--device", "cpu", "--impls", "reference,fast-eager", "--out", str(out),
            "--profile", str(out / "profile"), "--note", "test"]
    for extra in ([], ["--interleaved"]):
        subprocess.run([sys.executable, "-m", "benchmarks.e2e", *argv, *extra], check=True,
                       capture_output=True, text=True, cwd=ROOT)
    report.main(["--results", str(out), "--out", str(out / "RESULTS.md")])
    return out


def test_quick_run_writes_json_and_csv_rows(quick_run):
    rows = json.loads((quick_run / "e2e.json").read_text())
    assert [(r["impl"], r["precision"]) for r in rows] == [("reference", "fp32"), ("fast-eager", "fp32")]
    for r in rows:
        assert set(r) == set(e2e.ROW_KEYS), set(r) ^ set(e2e.ROW_KEYS)
        assert r["error"] is None
        for phase in ("train", "infer"):
            assert 0 < r[f"{phase}_p20_ms"] <= r[f"{phase}_ms"] <= r[f"{phase}_p80_ms"]
            assert r[f"{phase}_samples_per_s"] > 0 and r[f"{phase}_peak_mb"] >= 0 and r[f"{phase}_speedup"] > 0
        assert r["flops_per_step"] > 0 and r["gemm_tflops"] > 0 and r["fraction_of_gemm"] > 0
        assert r["process_peak_rss_mb"] > 0 and r["mfu"] is None  # no published peak for a CPU
        assert r["run_id"] == rows[0]["run_id"] and r["note"] == "test"
    assert rows[0]["train_speedup"] == 1.0  # the reference against itself
    with (quick_run / "e2e.csv").open() as f:
        lines = list(csv.DictReader(f))
    assert [line["impl"] for line in lines] == ["reference", "fast-eager"] and set(lines[0]) == set(e2e.ROW_KEYS)


def test_interleaved_run_writes_rows_with_ratios(quick_run):
    rows = json.loads((quick_run / "e2e.interleaved.json").read_text())
    assert [(r["impl"], r["precision"]) for r in rows] == [("reference", "fp32"), ("fast-eager", "fp32")]
    assert rows[0]["train_speedup"] == 1.0 and rows[1]["train_speedup"] > 0
    assert all(0 < r["train_p20_ms"] <= r["train_ms"] <= r["train_p80_ms"] for r in rows)
    assert "Interleaved training steps" in (quick_run / "RESULTS.md").read_text()


def test_profile_writes_chrome_trace_and_top_ops_table(quick_run):
    for row in ("reference", "fast-eager"):
        for phase in ("train", "infer"):
            stem = quick_run / "profile" / f"vit_tiny_patch16_224_32_d2_b2_{row}_fp32_{phase}"
            trace = json.loads(Path(f"{stem}.trace.json").read_text())
            assert trace["traceEvents"], stem
            table = Path(f"{stem}.top_ops.txt").read_text()
            assert "aten::" in table and "Self CPU" in table


def test_report_renders_tables_targets_and_charts(quick_run):
    md = (quick_run / "RESULTS.md").read_text()
    assert "| shape | impl | prec |" in md and "| vit_tiny_patch16_224 32px depth 2 B=2 | fast-eager | fp32 |" in md
    assert "Performance targets" in md  # the quick shape is not the target shape: says so instead of a verdict
    for name in ("throughput", "roofline"):
        png = quick_run / f"e2e.cpu.{name}.png"
        assert png.read_bytes()[:8] == PNG and f"]({png.name})" in md


def test_target_check_uses_the_best_fast_row():
    base = dict.fromkeys(e2e.ROW_KEYS) | {"vit": "vit_small_patch16_224", "batch": 8, "precision": "fp32"}
    rows = [base | {"impl": "reference", "train_speedup": 1.0, "train_peak_ratio": 1.0, "fraction_of_gemm": 0.1},
            base | {"impl": "fast-eager", "train_speedup": 2.5, "train_peak_ratio": 0.5, "fraction_of_gemm": 0.3},
            base | {"impl": "fast-compiled", "train_speedup": 1.5, "train_peak_ratio": 0.4, "fraction_of_gemm": 0.7}]
    text = report.target_check(rows, "cpu")
    assert "`fast-eager` fp32" in text and "(separate processes)" in text
    assert text.count("| met |") == 2 and text.count("**missed**") == 1  # speedup, memory met; 30% of GEMM missed
    interleaved = [r | {"train_speedup": s} for r, s in zip(rows, (1.0, 1.2, 2.1))]
    text = report.target_check(rows, "cpu", interleaved)  # speed from the interleaved rows, memory from its own row
    assert "`fast-compiled` fp32" in text and "(interleaved)" in text and "| 0.40x |" in text
    assert text.count("| met |") == 3


def test_full_runs_cover_every_row_and_shape():
    cpu = e2e.build_cases(torch.device("cpu"), False, None, None, None, ("fp32", "bf16"))
    assert {(c.vit, c.batch) for c in cpu} == {(m, b) for m in e2e.CPU_MODELS for b in e2e.CPU_BATCHES}
    assert len(cpu) == 4 * 5 and {c.precision for c in cpu if c.impl == "reference"} == {"fp32"}
    gpu = e2e.build_cases(torch.device("cuda"), False, None, None, None, None)
    assert {c.batch for c in gpu} == set(e2e.GPU_BATCHES) and len(gpu) == 3 * 3
    assert {(c.impl, c.precision) for c in gpu} == {("reference", "fp32"), ("fast-eager", "bf16"),
                                                    ("fast-compiled", "bf16")}


def test_gpu_check_script_parses_and_dry_run_lists_every_step(tmp_path):
    script = ROOT / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    out = subprocess.run(["bash", str(script), "--dry-run"], check=True, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")}).stdout
    for step in ("[install]", "[environment]", "[gpu-tests]", "-m gpu tests", "[ops]", "-m benchmarks.ops", "[e2e]",
                 "-m benchmarks.e2e --device cuda", "[report]"):
        assert step in out, step
    assert str(tmp_path / "out") in out and not (tmp_path / "out").exists()  # a dry run writes nothing


@pytest.mark.parametrize("name", ["ops", "e2e", "data"])
def test_maavt_bench_runs_the_benchmark_module(capfd, name):
    from maavt_fast import cli

    assert cli.main(["bench", name, "--help"]) == 0
    assert f"usage: python -m benchmarks.{name}" in capfd.readouterr().out


def test_quick_accum_run_writes_rows_of_each_accum_steps(tmp_path):
    """--accum --quick: fast-eager rows of one global batch in 1, 2 and 4 micro-batches, well-formed."""
    subprocess.run([sys.executable, "-m", "benchmarks.e2e", "--quick", "--accum", "--device", "cpu",
                    "--out", str(tmp_path)], check=True, capture_output=True, text=True, cwd=ROOT)
    assert not (tmp_path / "e2e.json").exists()  # the main table's newest run stays the main benchmark's
    rows = json.loads((tmp_path / "e2e.accum.json").read_text())
    assert [(r["impl"], r["batch"], r["accum_steps"]) for r in rows] == [("fast-eager", 4, k) for k in (1, 2, 4)]
    for r in rows:
        assert set(r) == set(e2e.ACCUM_ROW_KEYS) and r["error"] is None
        assert r["train_samples_per_s"] > 0 and r["train_peak_mb"] >= 0 and r["process_peak_rss_mb"] > 0
        assert r["shape"] == rows[0]["shape"]  # the same global batch
    assert rows[0]["train_speedup"] is None and all(r["train_speedup"] > 0 for r in rows[1:])  # vs accum 1
    with (tmp_path / "e2e.accum.csv").open() as f:
        assert [line["accum_steps"] for line in csv.DictReader(f)] == ["1", "2", "4"]
