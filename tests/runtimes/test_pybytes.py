"""The CPython-internals trick of _pybytes: a fresh bytes object filled in place, then zeroized."""

from __future__ import annotations

import os
import sys

import pytest

from modelseal.runtimes import _pybytes


def test_supported_on_cpython() -> None:
    assert _pybytes.supported() == (sys.implementation.name == "cpython")


@pytest.mark.parametrize("size", [0, 1, 64, 4096 + 3, 3 << 20])
def test_fill_hand_over_and_zeroize(size: int) -> None:
    if not _pybytes.supported():
        pytest.skip("not CPython")
    data = os.urandom(size)
    buf = _pybytes.BytesBuffer(size)
    buf.view[:] = data
    obj = buf.obj
    assert type(obj) is bytes and obj == data and len(obj) == size
    assert hash(obj) == hash(bytes(data))  # the hash was not cached before the fill
    window = buf.export(0, size)
    assert window.readonly and bytes(window) == data
    buf.close()
    assert buf.closed and obj == bytes(size)  # zeroized under every reference
    with pytest.raises(ValueError):
        bytes(window)  # released
    with pytest.raises(ValueError):
        _ = buf.obj


def test_an_outside_holder_pins_the_zeroized_object() -> None:
    np = pytest.importorskip("numpy", reason="numpy not installed")
    buf = _pybytes.BytesBuffer.copy_of(memoryview(b"secret weights!!"))
    held = np.frombuffer(buf.export(0, 16), dtype=np.uint8)
    buf.close()
    assert not held.any()  # zeroized, and still allocated: reading it is safe
    assert buf._obj is None  # our reference is gone; the array's base holds the object


def test_copy_of() -> None:
    buf = _pybytes.BytesBuffer.copy_of(memoryview(b"abc"))
    assert buf.obj == b"abc"
    buf.close()
