"""`load_data_only`: plain numpy values load (numpy 1 and 2 pickles), everything else is refused by name and
nothing in the file runs or builds unsafe numpy objects."""
from __future__ import annotations

import argparse
import collections
import zipfile

import numpy as np
import pytest
import torch

from maavt_fast.safe_load import UnsafeFileError, load_data_only

PLAIN = {
    "best_acc": np.float64(0.5),
    "history": [np.float32(1.5), np.int64(-3), np.bool_(True), np.complex64(1 + 2j), np.float16(2.0), np.uint8(7)],
    "matrix": np.arange(6, dtype=np.float32).reshape(2, 3),
    "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    "big_endian": np.arange(3, dtype=">i4"),
    "nested": collections.OrderedDict(empty=np.zeros(0), pair=(np.int32(1), torch.ones(2))),
}


def _assert_same(got, want):
    if isinstance(want, dict):
        assert type(got) is type(want) and list(got) == list(want)
        for key in want:
            _assert_same(got[key], want[key])
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want)
        for g, w in zip(got, want):
            _assert_same(g, w)
    elif isinstance(want, torch.Tensor):
        assert torch.equal(got, want)
    else:  # numpy scalar or array: same type, dtype (byte order included), shape and values
        assert type(got) is type(want) and got.dtype == want.dtype and np.shape(got) == np.shape(want)
        assert np.array_equal(got, want)


def _rename_in_pickle(path, old: bytes, new: bytes) -> None:
    """Rewrite names inside a torch.save zip's data.pkl (protocol 2 spells globals as plain text lines)."""
    with zipfile.ZipFile(path) as z:
        entries = [(info, z.read(info)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for info, data in entries:
            z.writestr(info, data.replace(old, new) if info.filename.endswith("data.pkl") else data)


def test_plain_numpy_values_load_exactly(tmp_path):
    torch.save(PLAIN, tmp_path / "ckpt.pt")
    _assert_same(load_data_only(tmp_path / "ckpt.pt"), PLAIN)


def test_numpy_1_pickles_load_too(tmp_path):
    """Files from numpy 1 (the official release's era) name numpy.core.multiarray, not numpy._core."""
    torch.save(PLAIN, tmp_path / "ckpt.pt")
    _rename_in_pickle(tmp_path / "ckpt.pt", b"numpy._core.multiarray", b"numpy.core.multiarray")
    with zipfile.ZipFile(tmp_path / "ckpt.pt") as z:
        pkl = next(z.read(n) for n in z.namelist() if n.endswith("data.pkl"))
    assert b"numpy.core.multiarray" in pkl and b"numpy._core" not in pkl  # the rewrite is not vacuous
    _assert_same(load_data_only(tmp_path / "ckpt.pt"), PLAIN)


@pytest.mark.parametrize("value,reason", [
    (np.array(["a", "b"]), "not a plain numeric dtype"),
    (np.array([1, None], dtype=object), "not a plain numeric dtype"),
    (np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]), "numpy"),
    (np.datetime64("2020-01-01"), "not a plain numeric dtype"),
    (argparse.Namespace(lr=0.1), "argparse.Namespace"),
])
def test_other_objects_are_refused_by_name(tmp_path, value, reason):
    torch.save({"state_dict": {}, "v": value}, tmp_path / "ckpt.pt")
    with pytest.raises(UnsafeFileError, match=reason):
        load_data_only(tmp_path / "ckpt.pt")


class _ObjectDType:
    def __reduce__(self):
        return np.dtype, ("O8", False, True)


class _StructuredState:
    """A float64 dtype whose pickled state declares an object field: numpy's own loader would accept it."""

    def __reduce__(self):
        return np.dtype, ("f8", False, True), (3, "|", None, ("a",), {"a": (np.dtype("f8"), 0)}, 8, 1, 1)


class _PointerArray:
    """An array whose raw bytes would become the address of a Python object under a crafted dtype."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __reduce__(self):
        return (np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                (1, (1,), self.dtype, False, b"\x41" * 8))


@pytest.mark.parametrize("dtype", [_ObjectDType(), _StructuredState()], ids=["object-dtype", "structured-state"])
def test_crafted_numpy_state_is_refused(tmp_path, dtype):
    torch.save({"state_dict": {}, "best_acc": _PointerArray(dtype)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeFileError, match="numpy dtype"):
        load_data_only(tmp_path / "evil.pt")


def test_legacy_format_file_is_refused_with_the_reason(tmp_path):
    torch.save({"v": argparse.Namespace(lr=0.1)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeFileError, match="old.pt holds data this loader refuses .*Namespace"):
        load_data_only(tmp_path / "old.pt")
