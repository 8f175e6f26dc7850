"""A smaller `maavt demo`: synthetic data -> training -> held-out accuracy well above chance and the untrained model."""
from __future__ import annotations

import json

from maavt_fast.train.demo import run_demo

SMALL = {"model.img_size": "32", "data.audio.n_fft": "62", "data.audio.hop": "516",  # 32 x 32 spectrograms
         "train.compile": "false", "train.epochs": "5", "train.batch_size": "8",
         "data.num_workers": "0"}


def test_small_demo_learns_and_writes_the_report(tmp_path, capsys):
    summary = run_demo(tmp_path / "demo", device="cpu", num_classes=4, clips_per_class=20, overrides=SMALL)
    assert summary.chance == 0.25
    assert summary.trained_acc >= 0.75, summary  # seeds 0-2 of the data give 0.94-1.0
    assert summary.trained_acc >= summary.untrained_acc + 0.3, summary
    for name, path in summary.paths.items():
        assert path.is_file() and path.stat().st_size > 0, name
    metrics = json.loads(summary.paths["metrics"].read_text())
    assert metrics["total_acc"] == summary.trained_acc and metrics["samples"] == 16
    out = capsys.readouterr().out
    assert "[demo] report:" in out and str(summary.paths["attention"]) in out
