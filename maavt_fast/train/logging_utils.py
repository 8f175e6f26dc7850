"""Run logs: JSON lines and the training progress line with a steady-state ETA (TensorBoard: tensorboard.py).

Only rank 0 writes; other ranks get a logger whose methods do nothing.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path


class RunLogger:
    """Appends one JSON object per event to `out_dir/log.jsonl`."""

    def __init__(self, out_dir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(out_dir) / "log.jsonl"
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def reset(self) -> None:
        """Start the JSON-lines file afresh."""
        if self.enabled:
            self.path.write_text("")

    def drop_after(self, step: int) -> None:
        """Remove the records of steps after `step` (a resumed run logs them again, so each appears once)."""
        if self.enabled and self.path.is_file():
            lines = self.path.read_text().splitlines(keepends=True)
            kept = [line for line in lines if line.endswith("\n") and json.loads(line)["step"] <= step]
            self.path.write_text("".join(kept))

    def log(self, event: str, step: int, **fields) -> None:
        if not self.enabled:
            return
        record = {"event": event, "step": step, "time": round(time.time(), 3), **fields}
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")
            f.flush()

    def close(self) -> None:
        """Nothing to release (each record is written and flushed at once); kept for the loop's symmetry."""


def _jsonable(x):
    return x.item() if hasattr(x, "item") else str(x)


def print_status(msg: str, enabled: bool = True) -> None:
    """A line for the user on stdout (rank 0 only), flushed at once."""
    if enabled:
        print(msg, file=sys.stdout, flush=True)


def format_duration(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


WARMUP_STEPS = 3  # steps after a (re)start left out of the ETA: torch.compile and lazy state make them slow


class Progress:
    """Throughput and ETA of the training steps.

    The ETA uses the steady-state rate only: the time of the first `warmup_steps` steps after the start
    (or resume) and the time between `pause` and `resume` (validation, checkpoints) are left out. Call
    `tick(step)` after every step (cheap: it reads the clock only once, at the end of the warm-up) and
    `update(step)` at each log point. `clock` is injectable for tests.
    """

    def __init__(self, total_steps: int, global_batch: int, start_step: int = 0,
                 warmup_steps: int = WARMUP_STEPS, clock=time.perf_counter):
        self.total_steps = total_steps
        self.global_batch = global_batch
        self._clock = clock
        self._warm_step = start_step + warmup_steps  # the steady state starts after this step
        self._paused = 0.0  # seconds paused since the start
        self._paused_at: float | None = None
        self._last_step, self._last_time, self._last_paused = start_step, clock(), 0.0
        self._warm_time: float | None = None  # training clock (pauses removed) at the end of the warm-up
        if warmup_steps <= 0:
            self._warm_time = self._last_time

    def _training_clock(self) -> float:
        return self._clock() - self._paused

    def pause(self) -> None:
        """Call before work that is not training (validation, checkpoints) ..."""
        self._paused_at = self._clock()

    def resume(self) -> None:
        """... and after it, so that time is not counted as training time."""
        if self._paused_at is not None:
            self._paused += self._clock() - self._paused_at
            self._paused_at = None

    def tick(self, step: int) -> None:
        """Step `step` is done: at the end of the warm-up, start the steady-state clock."""
        if step == self._warm_step and self._warm_time is None:
            self._warm_time = self._training_clock()

    def update(self, step: int) -> dict[str, float]:
        """Samples/s since the last update (pauses left out) and the ETA of the remaining steps at the
        steady-state rate (NaN while every step so far was a warm-up step)."""
        now = self._clock()
        dt = (now - self._last_time) - (self._paused - self._last_paused)
        dsteps = step - self._last_step
        self._last_step, self._last_time, self._last_paused = step, now, self._paused
        rate = dsteps * self.global_batch / dt if dt > 0 else float("nan")
        steady_steps = step - self._warm_step
        if self._warm_time is None or steady_steps <= 0:
            eta = float("nan")
        else:
            eta = (now - self._paused - self._warm_time) / steady_steps * (self.total_steps - step)
        return {"samples_per_s": rate, "eta_s": eta}

    def line(self, step: int, epoch: int, loss: float, acc: float, lr: float, stats: dict[str, float]) -> str:
        width = len(str(self.total_steps))
        eta = format_duration(stats["eta_s"]) if math.isfinite(stats["eta_s"]) else "-- (warm-up)"
        return (f"step {step:>{width}}/{self.total_steps} ({100 * step / self.total_steps:5.1f}%) epoch {epoch + 1} "
                f"loss {loss:.4f} acc {acc:.3f} lr {lr:.2e} | {stats['samples_per_s']:.1f} samples/s "
                f"ETA {eta}")
