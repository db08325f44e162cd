"""Decrypting straight into a fresh ``bytes`` object: the one CPython-internals trick of modelseal.

Why: ONNX Runtime (and OpenVINO's in-memory readers) accept a model only as ``str``/``bytes``, and
``bytes(view)`` costs a full extra copy of the plaintext that can never be zeroized (bytes are
immutable, so nothing may write to one). Measured on a 205 MB model: sealed/plain load 1.38x with
the copy, 1.02-1.18x when the payload is decrypted into the bytes object's own storage.

How: ``PyBytes_FromStringAndSize(NULL, n)`` is documented C API: it returns a new bytes object whose
contents are uninitialized, which the caller is expected to fill before anyone else sees the
object. The payload is decrypted into that storage through a writable memoryview
(a ctypes array laid over it), then the object is handed to the runtime. When the runtime is done,
close() overwrites the storage with zeros and drops our reference.

What this relies on (checked by :func:`supported`, and by tests/runtimes/test_pybytes.py):
- CPython's layout: the characters live at ``id(obj) + bytes.__basicsize__ - 1`` (``ob_sval``);
- nobody has hashed or interned the object before it is filled (we create it, so nobody has);
- zeroizing an object the runtime might still reference is a deliberate break of immutability:
  loaders call close() only once the runtime no longer needs the model bytes (ORT parses them
  into its own structures in the InferenceSession constructor), and drop the runtime's reference.

When :func:`supported` is false (PyPy, an unexpected layout) loaders fall back to ``bytes(view)``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import mmap
import sys
from typing import Any

# offsetof(PyBytesObject, ob_sval): the struct ends with `char ob_sval[1]`, counted in basicsize.
_SVAL_OFFSET = bytes.__basicsize__ - 1
# Below this the madvise calls cost more than they could save, and the storage sits in the heap.
_ADVISE_MIN = 1 << 20

_new_bytes: Any = getattr(ctypes, "pythonapi", None)  # absent outside CPython: supported() is False
if _new_bytes is not None:
    _new_bytes = _new_bytes.PyBytes_FromStringAndSize
    _new_bytes.restype = ctypes.py_object
    _new_bytes.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]


def _storage(obj: bytes) -> int:
    return id(obj) + _SVAL_OFFSET


def _writable(obj: bytes) -> memoryview:
    """A writable byte view of ``obj``'s characters that keeps ``obj`` alive.

    The view's base is a ctypes array laid over the characters that holds a reference to ``obj``:
    every memoryview or numpy array derived from the view keeps that base, hence ``obj``, alive,
    so nothing derived from it can ever point at freed memory.
    """
    # A subclass, because only those take attributes: plain ctypes arrays cannot hold `owner`.
    over: Any = type("_Characters", (ctypes.c_ubyte * len(obj),), {})
    characters = over.from_address(_storage(obj))
    characters.owner = obj
    return memoryview(characters).cast("B")


@functools.cache
def supported() -> bool:
    """True when a fresh bytes object can be filled in place (CPython with the expected layout)."""
    if sys.implementation.name != "cpython" or _new_bytes is None:
        return False
    try:
        probe = _new_bytes(None, 64)
        pattern = bytes(range(64))
        window = _writable(probe)
        window[:] = pattern
        window.release()
        return type(probe) is bytes and probe == pattern and probe.startswith(b"\x00\x01\x02")
    except Exception:  # any surprise means: do not use the trick
        return False


def _advise(address: int, size: int) -> None:
    """Huge pages (faster first touch) and no core dumps for the whole pages inside the storage."""
    if size < _ADVISE_MIN:
        return
    start = -(-address // mmap.PAGESIZE) * mmap.PAGESIZE
    stop = (address + size) // mmap.PAGESIZE * mmap.PAGESIZE
    if stop <= start:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for advice in ("MADV_HUGEPAGE", "MADV_DONTDUMP"):
        if hasattr(mmap, advice):
            libc.madvise(start, stop - start, getattr(mmap, advice))  # best effort: errors ignored


class BytesBuffer:
    """A PlainSink whose storage is a fresh ``bytes`` object, zeroized on close().

    Only build one when :func:`supported` is true.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        # size 0 yields the shared empty singleton: fine, nothing is ever written to it.
        self._obj: bytes | None = _new_bytes(None, size)
        assert self._obj is not None
        _advise(_storage(self._obj), size)
        self._view: memoryview | None = _writable(self._obj)
        self._exports: list[memoryview] = []

    @classmethod
    def copy_of(cls, data: memoryview) -> BytesBuffer:
        """A zeroizable bytes copy of ``data`` (for small parts such as an ONNX graph or IR xml)."""
        buf = cls(len(data))
        buf.view[:] = data
        return buf

    @property
    def view(self) -> memoryview:
        if self._view is None:
            raise ValueError("buffer is closed")
        return self._view

    @property
    def obj(self) -> bytes:
        """The filled object itself, for a runtime that accepts only bytes. Valid until close()."""
        if self._obj is None or self._view is None:
            raise ValueError("buffer is closed")
        return self._obj

    @property
    def closed(self) -> bool:
        return self._view is None

    def export(self, start: int, stop: int) -> memoryview:
        window = self.view[start:stop].toreadonly()
        self._exports.append(window)
        return window

    def close(self) -> None:
        if self._view is None:
            return
        ctypes.memset(_storage(self.obj), 0, self.size)
        # Views derived from ours (a numpy array over a window, say) keep the zeroized object
        # allocated through their base (see _writable); ours are released here.
        for window in [*self._exports, self._view]:
            with contextlib.suppress(BufferError):
                window.release()
        self._exports.clear()
        self._view = None
        self._obj = None

    def __del__(self) -> None:
        if getattr(self, "_view", None) is not None:
            self.close()
