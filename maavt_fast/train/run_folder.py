"""Ownership of a run folder (`train.out_dir`): one writer at a time, no silent overwrite, no stale temp files.

`RunFolder` is held by rank 0 for the lifetime of a run. It takes an exclusive `flock` on
`<out_dir>/.lock` (which holds "host pid" of the owner); the kernel releases it when the owner dies,
so a lock left by a killed process is taken over (and said so). On entry it also removes the temp
files of checkpoint writes that a kill interrupted.
"""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from maavt_fast.config import ConfigError
from maavt_fast.train.logging_utils import print_status

LOCK_NAME = ".lock"
RUN_FILES = ("checkpoints/latest.pt", "checkpoints/best.pt", "log.jsonl")  # what makes a folder hold a run


class RunFolderError(ConfigError):
    """The run folder cannot be used as asked (in use, holds another run, not writable)."""


def holds_run(out_dir: str | Path) -> bool:
    """Whether `out_dir` holds (part of) a training run: a checkpoint or a non-empty log."""
    out = Path(out_dir)
    return any((out / f).is_file() and (out / f).stat().st_size > 0 for f in RUN_FILES)


def remove_run(out_dir: str | Path) -> None:
    """Delete the checkpoints and the log of the run in `out_dir` (an explicit overwrite)."""
    for f in RUN_FILES:
        (Path(out_dir) / f).unlink(missing_ok=True)


def remove_stale_temp_files(out_dir: str | Path) -> int:
    """Delete the `.<name>.*.tmp` files interrupted checkpoint writes left; returns how many."""
    folder = Path(out_dir) / "checkpoints"
    stale = list(folder.glob(".*.tmp")) if folder.is_dir() else []
    for f in stale:
        f.unlink(missing_ok=True)
    return len(stale)


def check_new_run(out_dir: str | Path, overwrite: bool) -> None:
    """Refuse to start a fresh run over an existing one unless `overwrite`, which deletes the old one."""
    if not holds_run(out_dir):
        return
    if not overwrite:
        raise RunFolderError(f"train.out_dir {out_dir} already holds a run (checkpoints/log.jsonl): continue it with "
                             f"--resume auto, choose a new --train.out_dir, or replace it with --overwrite")
    remove_run(out_dir)
    print_status(f"--overwrite: removed the checkpoints and log of the earlier run in {out_dir}")


class RunFolder:
    """Context manager: create `out_dir` (checking it is writable), lock it, clean up stale temp files."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.lock_path = self.out_dir / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> "RunFolder":
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise RunFolderError(f"train.out_dir {self.out_dir} is not writable: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunFolderError(f"train.out_dir {self.out_dir} is in use by a running training ({owner}); wait for "
                                 f"it to end or choose another --train.out_dir") from None
        previous = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if previous:
            print_status(f"took over the lock of {self.out_dir} left by a process that ended without releasing it "
                         f"({previous})")
        me = f"host {socket.gethostname()} pid {os.getpid()}".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, me, 0)
        self._fd = fd
        removed = remove_stale_temp_files(self.out_dir)
        if removed:
            print_status(f"removed {removed} temp file(s) of interrupted checkpoint writes in {self.out_dir}")
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # an empty lock file: released cleanly
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
