"""Preemption and Ctrl-C: SIGTERM / SIGINT end a run after the current step, with `latest` written.

`StopSignals` (a context manager, main thread only) turns the first SIGTERM or SIGINT into a request
the training loop polls after every step; a second one kills as usual. The loop then saves `latest`
and raises `RunInterrupted`, whose `exit_code` is 128 + the signal number (130 for SIGINT, 143 for
SIGTERM), the shell's convention for a process ended by that signal.
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path

import torch

from maavt_fast.train.distributed import all_reduce_sum

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(Exception):
    """Training stopped on a signal after `step`, with `latest` (`path`) written; resumable."""

    def __init__(self, signum: int, step: int, path):
        self.signum, self.step, self.path = signum, step, path
        self.exit_code = 128 + signum
        config = Path(path).parent.parent / "config.json"
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step} with {path} saved; continue "
                         f"with: maavt train --config {config} --resume auto")


class StopSignals:
    """Records the first SIGTERM/SIGINT instead of dying; `requested(step)` says if one came (agreed by all ranks)."""

    def __init__(self, device: torch.device | None = None, distributed: bool = False, every: int = 1):
        self.signum = 0
        self.device, self.distributed, self.every = device, distributed, every
        self._previous: dict[int, object] = {}

    def _handle(self, signum, _frame) -> None:
        self.signum = signum
        for s, handler in self._previous.items():  # a second signal acts as it would without us
            signal.signal(s, handler)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def requested(self, step: int) -> int:
        """The signal number to stop on after `step` (0: go on). Under torchrun the ranks agree every `every`
        steps (one small all-reduce), so all of them stop after the same step."""
        if not self.distributed:
            return self.signum
        if step % self.every:
            return 0
        flag = all_reduce_sum(torch.tensor([self.signum], dtype=torch.int64, device=self.device))
        return int(flag.item()) and (self.signum or int(signal.SIGTERM))


class NoStop:
    """The loop's default when no signals are watched (tests, library use)."""

    def requested(self, step: int) -> int:
        return 0
