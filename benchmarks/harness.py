"""Shared benchmark utilities: timing, peak memory, result rows (JSON + CSV) and plots.

- `time_quantiles(fn, device, budget_s)`: p20 / p50 / p80 milliseconds per call of `fn`, measured by
  `triton.testing.do_bench` on CUDA (L2 cache flushed before every call) and by `torch.utils.benchmark`'s
  adaptive autorange on CPU (blocks of calls until the spread settles or the budget is spent).
- `measure(fn, device, warmup, repeats)`: median / p20 / p80 from a plain loop, for whole training steps
  (`e2e.py`: every call changes the model, seconds per call on CPU).
- `peak_bytes(fn, device)`: the peak memory one call adds (GPU: `torch.cuda.max_memory_allocated`; CPU: the
  growth of the process's peak resident set, VmHWM, reset through /proc/self/clear_refs; allocations served
  from memory the process already holds do not show there).
- `environment(device)`: device model (GPU name, or CPU model string), threads, torch/triton versions, git
  commit, UTC date and the 1-minute load average (other work on a shared machine skews timings).
- `append_rows(rows, out_dir, name)`: appends to `<out_dir>/<name>.json` and `<name>.csv`.
- `plot_sweeps`: one panel per swept dimension, p50 lines with p20-p80 bands (matplotlib, Agg).
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


def _times_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _status_bytes(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) * 1024


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory above the starting point during one call of `fn` (see the module docstring)."""
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed heap: return it, or the peak above RSS reads ~0
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _status_bytes("VmRSS")
    fn()
    return max(0, _status_bytes("VmHWM") - base)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated q-quantile (0 <= q <= 1) of `values`."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def measure(fn: Callable[[], object], device: torch.device, warmup: int = 3, repeats: int = 10) -> Measurement:
    """Warm `fn` up, time `repeats` calls in a plain loop and measure the peak memory of one more call.

    For whole training steps (each call changes the model and optimizer state, seconds per call on CPU), where
    `time_quantiles`' estimation of a block size and its repeated blocks would not serve.
    """
    for _ in range(warmup):
        fn()
    times = _times_ms(fn, device, repeats)
    return Measurement(statistics.median(times), percentile(times, 0.2), percentile(times, 0.8),
                       peak_bytes(fn, device), repeats)


@dataclasses.dataclass
class Quantiles:
    """Milliseconds per call at the 20th, 50th and 80th percentile, and how they were measured."""
    p20_ms: float
    p50_ms: float
    p80_ms: float
    timer: str


def time_quantiles(fn: Callable[[], object], device: torch.device, budget_s: float = 0.5) -> Quantiles:
    """p20 / p50 / p80 ms per call of `fn` (already warmed up: compiled, autotuned).

    CUDA: `triton.testing.do_bench` (L2 flushed before every call, `budget_s` of repeats after 1/4 of it
    of warm-up). CPU: `torch.utils.benchmark.Timer.adaptive_autorange`: blocks of calls until the spread
    of the block times is under 5% of their median (or `budget_s` is spent); quantiles over the blocks.
    """
    if device.type == "cuda":
        from triton.testing import do_bench

        rep = max(1, round(budget_s * 1e3))
        p20, p50, p80 = do_bench(fn, warmup=max(1, rep // 4), rep=rep, quantiles=[0.2, 0.5, 0.8])
        return Quantiles(p20, p50, p80, f"triton.testing.do_bench(rep={rep}ms)")
    from torch.utils.benchmark import Timer

    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.adaptive_autorange(threshold=0.05, min_run_time=budget_s / 5, max_run_time=budget_s)
    times = [t * 1e3 for t in m.times]
    return Quantiles(percentile(times, 0.2), percentile(times, 0.5), percentile(times, 0.8),
                     f"torch.utils.benchmark.adaptive_autorange({len(times)} blocks of {m.number_per_run})")


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_model(device: torch.device) -> str:
    """The GPU's name, or the CPU's model string from /proc/cpuinfo ("cpu" where there is none)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def environment(device: torch.device) -> dict[str, str | int | float]:
    """Columns that say where and when a row was measured."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return {"device": device_model(device), "device_type": device.type, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "triton": triton_version, "commit": _git_commit(),
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


def plot_sweeps(rows: Iterable[dict], path: str | Path, panels: Sequence[tuple[str, str, list[dict]]],
                series: Sequence[str], title: str = "") -> Path:
    """One panel per (title, swept dimension, rows): p50 against the dimension, a p20-p80 band around it,
    one line per distinct `series` key tuple (rows with p50_ms None, i.e. failed, are left out)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(panels))
    lines = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.6 * columns, 3.6 * lines), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (name, dim, mine) in zip(axes.flat, panels):
        mine = [r for r in mine if r["p50_ms"] is not None]
        for key in sorted({tuple(str(r[k]) for k in series) for r in mine}):
            pts = sorted((r[dim], r["p20_ms"], r["p50_ms"], r["p80_ms"]) for r in mine
                         if tuple(str(r[k]) for k in series) == key)
            x, lo, mid, hi = zip(*pts)
            label = " ".join(k for k in key if k)
            (line,) = ax.plot(x, mid, marker="o", label=label)
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.25, linewidth=0)
        ax.set(title=name, xlabel=dim, ylabel="ms (p50, band p20-p80)", yscale="log")
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
