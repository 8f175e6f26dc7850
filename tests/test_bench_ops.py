"""benchmarks/ops.py --quick writes well-formed result files; the harness appends rows and plots.

No timing is asserted anywhere: speed lives in the benchmark results, not in tests.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import harness  # noqa: E402

COLUMNS = {"op", "impl", "mode", "variant", "x", "size", "median_ms", "p20_ms", "p80_ms", "peak_bytes", "repeats",
           "device", "torch", "triton", "commit", "date", "load_1min"}


def test_quick_run_writes_rows_and_plot(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ops.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, cwd=ROOT)
    rows = json.loads((tmp_path / "ops.json").read_text())
    # 2 ops x 3 CPU implementations (release, reference, compiled) x 3 modes
    assert len(rows) == 18
    assert {(r["op"], r["impl"], r["mode"]) for r in rows} == {
        (op, impl, mode) for op in ("contrastive", "group_attention") for impl in ("release", "reference", "compiled")
        for mode in ("forward", "backward", "full")}
    for r in rows:
        assert set(r) == COLUMNS
        assert 0 < r["p20_ms"] <= r["median_ms"] <= r["p80_ms"] and r["peak_bytes"] >= 0
    with (tmp_path / "ops.csv").open() as f:
        assert list(csv.DictReader(f)) == [{k: str(v) for k, v in r.items()} for r in rows]
    assert (tmp_path / "ops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_append_rows_keeps_earlier_runs(tmp_path):
    rows = [{"op": "a", "median_ms": 1.5}, {"op": "b", "median_ms": 2.0}]
    harness.append_rows(rows, tmp_path, "x")
    json_path, csv_path = harness.append_rows(rows[:1], tmp_path, "x")
    assert json.loads(json_path.read_text()) == rows + rows[:1]
    assert csv_path.read_text().splitlines() == ["op,median_ms", "a,1.5", "b,2.0", "a,1.5"]


@pytest.mark.parametrize("q,expected", [(0.0, 1.0), (0.5, 2.5), (0.2, 1.6), (1.0, 4.0)])
def test_percentile(q, expected):
    assert harness.percentile([4.0, 1.0, 3.0, 2.0], q) == pytest.approx(expected)


def test_measure_counts_calls_and_reports_memory():
    import torch
    calls = []
    m = harness.measure(lambda: calls.append(torch.ones(1 << 20)), torch.device("cpu"), warmup=2, repeats=3)
    assert len(calls) == 2 + 3 + 1  # warm-up, timed, one more for the peak memory
    assert m.repeats == 3 and m.peak_bytes >= 0


def test_measure_times_fn_on_fresh_setup_results():
    import torch
    made, used = [], []
    harness.measure(lambda x: used.append(x), torch.device("cpu"), warmup=1, repeats=2,
                    setup=lambda: made.append(len(made)) or made[-1])
    assert made == used == [0, 1, 2, 3]  # one fresh setup result per call
