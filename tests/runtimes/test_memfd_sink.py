"""MemfdSink, the ONNX Runtime loader's memfd: page prefault thread, freeze, early fd close, zeroize."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from modelseal import memfd
from modelseal.memfd import MemfdSink

if not hasattr(os, "memfd_create"):
    pytest.skip("memfd_create is Linux only", allow_module_level=True)


def _prefault_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "modelseal-prefault"]


def test_prefault_then_freeze_then_zeroize() -> None:
    size = memfd.PREFAULT_MIN + 12345  # not a multiple of the page size or of the prefault step
    data = os.urandom(1 << 20) * (size >> 20) + os.urandom(size % (1 << 20))
    sink = MemfdSink("t", size)
    assert sink._prefault is not None  # a helper thread maps the pages in while we write
    sink.view[:] = data
    sink.freeze()
    assert sink._prefault is None and not _prefault_threads()  # stopped and joined before the seal
    reader = os.open(sink.path, os.O_RDONLY)
    try:
        assert os.pread(reader, size, 0) == data
        assert memfd.seals(reader) & memfd.READERS_ONLY == memfd.READERS_ONLY
        writer = os.open(sink.path, os.O_RDWR)  # opening is allowed; every write is refused
        try:
            with pytest.raises(PermissionError):
                os.pwrite(writer, b"x", 0)
        finally:
            os.close(writer)
        sink.close()
        assert sink.closed
        assert os.pread(reader, size, 0) == bytes(size)  # zeroized under every reader
    finally:
        os.close(reader)


def test_close_while_prefaulting_stops_the_helper() -> None:
    sink = MemfdSink("t", 256 << 20)  # far more than the helper maps before close() stops it
    sink.close()
    assert sink.closed and not _prefault_threads()


def test_small_sinks_and_opt_out_fault_their_own_pages() -> None:
    small = MemfdSink("t", memfd.PREFAULT_MIN - 1)
    opted_out = MemfdSink("t", memfd.PREFAULT_MIN, prefault=False)
    try:
        assert small._prefault is None and opted_out._prefault is None
    finally:
        small.close()
        opted_out.close()


def test_close_fd_early_keeps_the_content_for_the_zeroize() -> None:
    sink = MemfdSink("t", 4096)
    sink.view[:5] = b"model"
    fd = int(sink.path.rsplit("/", 1)[1])
    sink.freeze()
    sink.close_fd()
    with pytest.raises(OSError) as closed:
        os.fstat(fd)
    assert closed.value.errno == errno.EBADF
    with pytest.raises(ValueError, match="descriptor is closed"):
        _ = sink.path
    assert bytes(sink.view[:5]) == b"model"  # still in our mapping, for close() to zeroize
    sink.close()
    sink.close()  # idempotent; does not close the (possibly reused) fd number again
    assert sink.closed
