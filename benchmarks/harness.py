"""Shared benchmark utilities: timing, peak memory, result rows (JSON + CSV) and a plot.

- `measure(fn, device, warmup, repeats, setup=None)`: median / p20 / p80 milliseconds (CUDA events on GPU,
  `time.perf_counter` on CPU) and the peak memory one call adds (GPU: `torch.cuda.max_memory_allocated`;
  CPU: the growth of the process's peak resident set, VmHWM, reset through /proc/self/clear_refs;
  allocations served from memory the process already holds do not show there).
- `environment(device)`: device name, torch/triton versions, git commit, UTC date and the 1-minute load
  average (other work on a shared machine skews timings) for every row.
- `append_rows(rows, out_dir, name)`: appends to `<out_dir>/<name>.json` and `<name>.csv`.
- `plot_rows(rows, path, ...)`: one panel per group of rows, one line per series (matplotlib, Agg).
"""
from __future__ import annotations

import csv
import ctypes
import dataclasses
import datetime
import json
import math
import os
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch


@dataclasses.dataclass
class Measurement:
    """Milliseconds per call (median, 20th and 80th percentile) and the peak bytes one call adds."""
    median_ms: float
    p20_ms: float
    p80_ms: float
    peak_bytes: int
    repeats: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prepare(setup: Callable[[], object] | None, device: torch.device) -> tuple:
    """The arguments of one call: () without setup, else (setup(),), run untimed and synchronised."""
    args = () if setup is None else (setup(),)
    _sync(device)
    return args


def _times_ms(fn: Callable[..., object], device: torch.device, repeats: int,
              setup: Callable[[], object] | None) -> list[float]:
    times = []
    for _ in range(repeats):
        args = _prepare(setup, device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(*args)
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def _status_bytes(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) * 1024


def peak_bytes(fn: Callable[..., object], device: torch.device, setup: Callable[[], object] | None = None) -> int:
    """Peak memory above the starting point (after `setup`) during one call of `fn` (see the module docstring)."""
    args = _prepare(setup, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn(*args)
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed heap: return it, or the peak above RSS reads ~0
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _status_bytes("VmRSS")
    fn(*args)
    return max(0, _status_bytes("VmHWM") - base)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated q-quantile (0 <= q <= 1) of `values`."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def measure(fn: Callable[..., object], device: torch.device, warmup: int = 3, repeats: int = 10,
            setup: Callable[[], object] | None = None) -> Measurement:
    """Warm `fn` up, time `repeats` calls and measure the peak memory of one more call.

    With `setup`, every call is `fn(setup())` and only `fn` is timed (e.g. setup = a forward pass,
    fn = its backward).
    """
    for _ in range(warmup):
        fn(*_prepare(setup, device))
    times = _times_ms(fn, device, repeats, setup)
    return Measurement(statistics.median(times), percentile(times, 0.2), percentile(times, 0.8),
                       peak_bytes(fn, device, setup), repeats)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(device: torch.device) -> dict[str, str]:
    """Columns that say where and when a row was measured."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return {"device": name, "torch": torch.__version__, "triton": triton_version, "commit": _git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "load_1min": round(os.getloadavg()[0], 2)}


def append_rows(rows: list[dict], out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Append `rows` (flat dicts with the same keys) to `<out_dir>/<name>.json` and `.csv`; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / f"{name}.json", out_dir / f"{name}.csv"
    old = json.loads(json_path.read_text()) if json_path.exists() else []
    json_path.write_text(json.dumps(old + rows, indent=1) + "\n")
    new_file = not csv_path.exists()
    with csv_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new_file:
            writer.writeheader()
        writer.writerows(rows)
    return json_path, csv_path


def plot_rows(rows: Iterable[dict], path: str | Path, x: str, y: str, panel: Sequence[str], series: str,
              title: str = "", columns: int = 3, xlabel: str | None = None) -> Path:
    """Line plot of `y` against `x` (log-log), one panel per distinct `panel` key tuple, one line per `series`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(rows)
    panels = sorted({tuple(r[k] for k in panel) for r in rows})
    columns = min(columns, len(panels))
    lines = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.5 * columns, 3.6 * lines), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, panels):
        mine = [r for r in rows if tuple(r[k] for k in panel) == key]
        for name in sorted({r[series] for r in mine}):
            points = sorted((float(r[x]), float(r[y])) for r in mine if r[series] == name)
            ax.plot(*zip(*points), marker="o", label=name)
        ax.set(title=" / ".join(map(str, key)), xlabel=xlabel or x, ylabel=y, xscale="log", yscale="log")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
