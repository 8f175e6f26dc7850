"""benchmarks/data.py --quick runs and writes its rows (never a timing assertion)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_data_benchmark_quick_writes_rows(tmp_path):
    run = subprocess.run([sys.executable, "-m", "benchmarks.data", "--quick", "--device", "cpu",
                          "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads((tmp_path / "data.json").read_text())
    with open(tmp_path / "data.csv") as f:
        assert list(csv.DictReader(f)) == [{k: str(v) for k, v in r.items()} for r in rows]
    assert {r["path"] for r in rows} >= {"cpu"}
    for r in rows:
        assert r["samples"] > 0 and r["samples_per_s"] > 0 and r["model_samples_per_s"] > 0
        assert r["recipe"] == "vggsound-train-224" and r["quick"] is True
        for key in ("device", "device_type", "threads", "torch", "triton", "commit", "date", "load_1min"):
            assert r[key] not in (None, ""), key
