"""Progress of a long loop (evaluation, `prepare`, `synth`): a tqdm bar on a terminal, else a plain line
every `every_percent` percent (log files, pipes, schedulers), so logs stay readable.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

from maavt_fast._extras import requires

T = TypeVar("T")


def progress(items: Iterable[T], total: int, label: str, enabled: bool = True, every_percent: int = 10,
             stream: TextIO | None = None, clock=time.perf_counter) -> Iterator[T]:
    """Yield `items` (`total` of them, the bar's length), showing the progress on `stream` (stdout)."""
    stream = sys.stdout if stream is None else stream
    if not enabled or total <= 0:
        yield from items
        return
    if stream.isatty():
        with requires("data", __name__):
            from tqdm import tqdm

        with tqdm(items, total=total, desc=label, file=stream, leave=False, dynamic_ncols=True) as bar:
            yield from bar
        return
    yield from _plain_lines(items, total, label, every_percent, stream, clock)


def _plain_lines(items: Iterable[T], total: int, label: str, every_percent: int, stream: TextIO,
                 clock) -> Iterator[T]:
    """One line each time the done fraction crosses a multiple of `every_percent` (and at the end)."""
    started, next_mark = clock(), every_percent
    for done, item in enumerate(items, 1):
        yield item
        percent = 100 * done // total
        if percent >= next_mark or done == total:
            seconds = clock() - started
            eta = seconds / done * (total - done)
            print(f"{label}: {percent}% ({done}/{total}) in {seconds:.1f} s, ETA {eta:.0f} s", file=stream,
                  flush=True)
            next_mark = (percent // every_percent + 1) * every_percent
