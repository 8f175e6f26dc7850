"""`torch.load` that never runs code from the file: tensors, containers, numbers, strings and numpy data only.

Official MA-AVT checkpoints may store `best_acc` and `history` values as numpy scalars or arrays. numpy's own
unpickling hooks are not safe to hand a file (a dtype's pickled state can declare object fields, and with
them raw pointers), so the numpy names a pickle uses (numpy 1 and numpy 2 spellings) are bound to the
stand-ins below instead: they accept only plain bool/int/uint/float/complex dtypes, rebuild values from
raw bytes with `np.frombuffer`, and refuse anything else.
"""
from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import numpy as np
import torch

_PLAIN_KINDS = "biufc"  # bool, int, uint, float, complex: no objects, fields or sub-arrays


class _NumpyDType:
    """Stand-in for `numpy.dtype(code, align, copy)` + its pickled state; `.dtype` is the real, plain dtype."""

    def __init__(self, code, align=False, copy=True):
        self.dtype = np.dtype(code) if isinstance(code, str) and len(code) <= 3 else None
        if self.dtype is None or self.dtype.kind not in _PLAIN_KINDS:
            raise pickle.UnpicklingError(f"numpy dtype {code!r} is not a plain numeric dtype")

    def __setstate__(self, state):
        byteorder, extra = state[1], state[2:5]  # (version, byteorder, subarray, names, fields, ...)
        if byteorder not in ("<", ">", "|", "=") or any(x is not None for x in extra):
            raise pickle.UnpicklingError(f"numpy dtype {self.dtype} with structured state {state!r}")
        if byteorder in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(byteorder)


def _scalar(dtype: _NumpyDType, raw: bytes) -> np.generic:
    """Stand-in for `numpy.core.multiarray.scalar(dtype, raw)`."""
    if not isinstance(dtype, _NumpyDType) or not isinstance(raw, bytes) or len(raw) != dtype.dtype.itemsize:
        raise pickle.UnpicklingError("malformed numpy scalar")
    return np.frombuffer(raw, dtype.dtype)[0]


class _NDArrayClass:
    """Stand-in for the `numpy.ndarray` global: only the class argument of `_reconstruct`, never built."""

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError("numpy.ndarray may only appear as the class of a pickled array")


class _NumpyArray:
    """Stand-in for `numpy.core.multiarray._reconstruct(ndarray, shape, typecode)` + its pickled state;
    `load_data_only` swaps it for `.array`."""

    def __init__(self, cls=None, shape=None, typecode=None):
        if cls is not _NDArrayClass:
            raise pickle.UnpicklingError(f"numpy array of class {cls!r}")
        self.array = None

    def __setstate__(self, state):
        _, shape, dtype, fortran, raw = state
        if not (isinstance(dtype, _NumpyDType) and isinstance(raw, bytes) and isinstance(shape, tuple)
                and all(isinstance(n, int) and n >= 0 for n in shape)
                and len(raw) == math.prod(shape) * dtype.dtype.itemsize):
            raise pickle.UnpicklingError("malformed numpy array")
        self.array = np.frombuffer(raw, dtype.dtype).reshape(shape, order="F" if fortran else "C").copy()


def _empty_bytes(*args) -> bytes:
    """Stand-in for `builtins.bytes`, which pickle protocol 2 calls with no arguments for b"" (empty arrays)."""
    if args:
        raise pickle.UnpicklingError("bytes() with arguments")
    return b""


_NUMPY_STAND_INS = [(_NumpyDType, "numpy.dtype"), (_NDArrayClass, "numpy.ndarray"),
                    (_empty_bytes, "builtins.bytes")] + [
    (fn, f"{module}.multiarray.{name}") for module in ("numpy.core", "numpy._core")
    for fn, name in ((_scalar, "scalar"), (_NumpyArray, "_reconstruct"))]


class UnsafeFileError(pickle.UnpicklingError):
    """The file pickles Python objects that only a full (code-running) unpickle could rebuild."""


def _materialize(obj):
    """Replace every `_NumpyArray` inside dicts, lists and tuples by its array."""
    if isinstance(obj, _NumpyArray):
        return obj.array
    if isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _materialize(value)
    elif isinstance(obj, list):
        obj[:] = [_materialize(v) for v in obj]
    elif type(obj) is tuple:
        return tuple(_materialize(v) for v in obj)
    return obj


def load_data_only(path: str | Path) -> object:
    """The object saved in `path` (on CPU); raises `UnsafeFileError` naming any class it would have to import."""
    with torch.serialization.safe_globals(_NUMPY_STAND_INS):
        try:
            return _materialize(torch.load(path, map_location="cpu", weights_only=True))
        except pickle.UnpicklingError as e:
            try:  # the globals no allowlist covers (a zip checkpoint only)
                unsafe = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path))
            except Exception:  # noqa: BLE001 - legacy (non-zip) files: torch's own message says enough
                unsafe = ""
            refused = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\n|$)", str(e), re.S)  # a stand-in's reason
            reason = unsafe or (refused[1] if refused else e)
            raise UnsafeFileError(
                f"{path} holds data this loader refuses ({reason}): it reads tensors, containers, numbers, "
                "strings and plain numeric numpy values, and never unpickles other objects, which could run "
                "code. Only if you trust the file, load it with torch.load(..., weights_only=False) and save "
                "its tensors again") from e
