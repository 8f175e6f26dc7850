"""`torch.load` that never runs code from the file: tensors, containers, numbers, strings and numpy data only.

Official MA-AVT checkpoints store `best_acc` and `history` values as numpy scalars, so numpy scalars, dtypes
and arrays are allowed on top of `weights_only=True` (under both their numpy 1 and numpy 2 module names).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

_multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
_NUMERIC_DTYPES = [type(np.dtype(code)) for code in "?bhilqBHILQefdgFDG"]  # numpy 2 pickles these classes
_NUMPY_GLOBALS = [np.dtype, np.ndarray, _multiarray.scalar, _multiarray._reconstruct, *_NUMERIC_DTYPES,
                  (_multiarray.scalar, "numpy.core.multiarray.scalar"),
                  (_multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
_NUMPY_NAMES = {"numpy.dtype", "numpy.ndarray", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
                "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
                *(f"{t.__module__}.{t.__qualname__}" for t in _NUMERIC_DTYPES)}


class UnsafeFileError(pickle.UnpicklingError):
    """The file pickles Python objects that only a full (code-running) unpickle could rebuild."""


def load_data_only(path: str | Path) -> object:
    """The object saved in `path` (on CPU); raises `UnsafeFileError` naming any class it would have to import."""
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in _NUMPY_NAMES]
        raise UnsafeFileError(
            f"{path} pickles Python objects other than tensors, containers, numbers and numpy data "
            f"({', '.join(unsafe) or e}); they are not loaded because unpickling them can run code. If you trust "
            "the file, rewrite it without them, e.g. c = torch.load(p, weights_only=False); "
            "torch.save({'state_dict': c['state_dict'], 'epoch': c.get('epoch')}, 'clean.pth.tar')") from e
