"""Errors for bad input: each names the file (or manifest row) and what is wrong with it."""
from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A dataset file or manifest row that cannot be used. `path` is the offending file."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        """Pickles as (path, problem), so the error crosses process boundaries (decode workers) unchanged."""
        return type(self), (self.path, self.problem)


def require_file(path: str | Path, kind: str) -> Path:
    """`path` as a Path; DataError "<kind> file is missing" / "... is empty" otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{kind} file is missing")
    if path.stat().st_size == 0:
        raise DataError(path, f"{kind} file is empty")
    return path
