"""`torch.profiler` over a few calls of a step: a Chrome trace and a table of the top ops by time.

Used by `maavt bench e2e --profile DIR`: open `<name>.trace.json` in chrome://tracing or Perfetto;
`<name>.top_ops.txt` lists the ops that take the most self time (device time on CUDA).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def profile_steps(step: Callable[[], object], n_steps: int, out_dir: str | Path, name: str,
                  device: torch.device, top: int = 30) -> dict[str, str]:
    """Run `step` `n_steps` times under the profiler; returns the paths of the trace and the table."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(n_steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    trace = out_dir / f"{name}.trace.json"
    table = out_dir / f"{name}.top_ops.txt"
    prof.export_chrome_trace(str(trace))
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    text = prof.key_averages().table(sort_by=sort_by, row_limit=top, max_name_column_width=60)
    table.write_text(f"{name}: {n_steps} steps, sorted by {sort_by}\n{text}\n")
    return {"trace": str(trace), "top_ops": str(table)}
