"""Run logs: JSON lines (always), TensorBoard scalars (when `tensorboard` is installed), a progress line.

Only rank 0 writes; other ranks get a logger whose methods do nothing.
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from pathlib import Path


class RunLogger:
    """Appends one JSON object per event to `out_dir/log.jsonl` and mirrors numbers to TensorBoard."""

    def __init__(self, out_dir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(out_dir) / "log.jsonl"
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if importlib.util.find_spec("tensorboard") is not None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))

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
        if self._tb is not None:
            for k, v in fields.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(f"{event}/{k}", v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


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


class Progress:
    """Throughput and ETA of the training steps, measured between `update` calls (excludes eval time)."""

    def __init__(self, total_steps: int, global_batch: int, start_step: int = 0):
        self.total_steps = total_steps
        self.global_batch = global_batch
        self._last_step = start_step
        self._last_time = time.perf_counter()
        self._train_seconds = 0.0
        self._train_steps = 0

    def pause(self) -> None:
        """Call before work that is not training (validation, checkpoints) ..."""
        self._paused_at = time.perf_counter()

    def resume(self) -> None:
        """... and after it, so that time is not counted as training time."""
        self._last_time += time.perf_counter() - self._paused_at

    def update(self, step: int) -> dict[str, float]:
        """Samples/s since the last update and the ETA of the remaining steps at the average rate."""
        now = time.perf_counter()
        dt, dsteps = now - self._last_time, step - self._last_step
        self._train_seconds += dt
        self._train_steps += dsteps
        self._last_time, self._last_step = now, step
        rate = dsteps * self.global_batch / dt if dt > 0 else float("nan")
        per_step = self._train_seconds / max(self._train_steps, 1)
        return {"samples_per_s": rate, "eta_s": per_step * (self.total_steps - step)}

    def line(self, step: int, epoch: int, loss: float, acc: float, lr: float, stats: dict[str, float]) -> str:
        width = len(str(self.total_steps))
        return (f"step {step:>{width}}/{self.total_steps} ({100 * step / self.total_steps:5.1f}%) epoch {epoch + 1} "
                f"loss {loss:.4f} acc {acc:.3f} lr {lr:.2e} | {stats['samples_per_s']:.1f} samples/s "
                f"ETA {format_duration(stats['eta_s'])}")
