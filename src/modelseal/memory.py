"""Plaintext buffers: one fresh anonymous private mapping per opened model, zeroized on close.

MAP_PRIVATE|MAP_ANONYMOUS pages are never backed by a file and may use transparent huge pages
(mmap.mmap(-1, n) defaults to MAP_SHARED, which is shmem-backed and measured 2-4x slower to fill).
MADV_DONTDUMP keeps the plaintext out of core dumps, MADV_DONTFORK out of child processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
from typing import Protocol

_PAGE = mmap.PAGESIZE


def zero_fill(mapping: mmap.mmap) -> None:
    """Overwrite a whole mapping with zeros in place (memset: no temporary buffer of its size)."""
    holder = ctypes.c_char.from_buffer(mapping)
    try:
        ctypes.memset(ctypes.addressof(holder), 0, len(mapping))
    finally:
        del holder


class PlainSink(Protocol):
    """Where open() decrypts a payload: PlainBuffer, or a runtime loader's own (opening.open_into)."""

    @property
    def view(self) -> memoryview: ...

    @property
    def closed(self) -> bool: ...

    def export(self, start: int, stop: int) -> memoryview: ...

    def close(self) -> None: ...


class PlainBuffer:
    """A writable anonymous mapping of ``size`` bytes; ``view`` is valid until ``close()``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._map = mmap.mmap(
            -1,
            max(size, _PAGE),
            flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
        )
        for advice in ("MADV_HUGEPAGE", "MADV_DONTDUMP", "MADV_DONTFORK"):
            if hasattr(mmap, advice):
                with contextlib.suppress(OSError):
                    self._map.madvise(getattr(mmap, advice))
        self._view: memoryview | None = memoryview(self._map)
        self._exports: list[memoryview] = []

    @property
    def view(self) -> memoryview:
        if self._view is None:
            raise ValueError("buffer is closed")
        return self._view

    def export(self, start: int, stop: int) -> memoryview:
        """A read-only window that close() will release and zeroize under."""
        window = self.view[start:stop].toreadonly()
        self._exports.append(window)
        return window

    @property
    def closed(self) -> bool:
        return self._view is None

    def zeroize(self) -> None:
        if self._view is None:
            return
        zero_fill(self._map)

    def close(self) -> None:
        """Zeroize, release every view handed out, and unmap (deferred if a caller still holds one)."""
        if self._view is None:
            return
        self.zeroize()
        for window in self._exports:
            with contextlib.suppress(BufferError):
                window.release()
        self._exports.clear()
        self._view.release()
        self._view = None
        with contextlib.suppress(BufferError):
            # Still exported (e.g. a numpy array over a window): pages are already zero; the
            # mapping goes away when the last holder lets go.
            self._map.close()
