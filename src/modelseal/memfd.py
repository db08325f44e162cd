"""Sealed memfds: an in-memory file written once, then frozen by the kernel, for code that wants a path.

A memfd lives on the kernel's internal shmem mount: it has no name in any filesystem a user can
browse and is never written to disk (only to swap, which mlock of a mapping prevents where permitted).
After :data:`SEALS` are applied nobody, not even this process, can change, truncate, grow or
unseal it: a reader that opens ``/proc/<pid>/fd/<n>`` for writing gets EPERM on every write.

F_SEAL_FUTURE_WRITE is not used: F_SEAL_WRITE is applied once the content is complete and with no
writable mapping outstanding, which is strictly stronger.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import threading
from typing import Any

from .errors import ModelSealError
from .memory import zero_fill

SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL

# Linux returns at most this many bytes from one write(2); larger requests are short writes.
_MAX_WRITE = 0x7FFFF000


class MemfdError(ModelSealError):
    """The kernel refused to create or seal a memfd (old kernel, no memfd_create, out of memory)."""


def create_sealed(name: str, data: memoryview | bytes) -> int:
    """A sealed memfd holding ``data``; returns the fd (close-on-exec, read-write description).

    ``name`` shows in /proc/<pid>/fd as ``memfd:<name>`` and is visible to the same user: pass
    something non-confidential or accept that it is visible to the owner of the process.
    """
    if not hasattr(os, "memfd_create"):
        raise MemfdError("memfd_create is not available on this platform")
    try:
        fd = os.memfd_create(name[:200], os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError as e:
        raise MemfdError(f"memfd_create failed: {e.strerror}") from None
    try:
        view = memoryview(data).cast("B")
        if len(view):
            # Reserve all pages first: a model that does not fit fails here, not half-way through.
            os.ftruncate(fd, len(view))
        done = 0
        while done < len(view):
            done += os.pwrite(fd, view[done : done + _MAX_WRITE], done)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    except OSError as e:
        os.close(fd)
        raise MemfdError(f"cannot fill a sealed memfd: {e.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def seals(fd: int) -> int:
    """The seals applied to ``fd`` (a bit set of fcntl.F_SEAL_*)."""
    return fcntl.fcntl(fd, fcntl.F_GET_SEALS)


def is_sealed(fd: int) -> bool:
    return seals(fd) & SEALS == SEALS


# F_SEAL_FUTURE_WRITE (Linux 5.1): no new write() or writable mapping by anyone, while mappings
# that already exist stay writable. Python's fcntl module does not name it.
F_SEAL_FUTURE_WRITE = 0x10
READERS_ONLY = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_SEAL


# madvise(MADV_POPULATE_WRITE) (Linux 5.14) faults a whole range in for writing in one call. Python's
# mmap module does not name it, and mmap.madvise keeps the GIL; libc's through ctypes releases it.
MADV_POPULATE_WRITE = 23
# Below this a helper thread costs more than the page faults it saves.
PREFAULT_MIN = 16 << 20
_PREFAULT_STEP = 8 << 20


def _libc_madvise() -> Any:
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


_madvise = _libc_madvise()


class _Prefault:
    """Maps a fresh shared mapping's pages in on a helper thread, ahead of the thread writing them.

    A memfd is made of 4 KiB shmem pages (no huge pages unless the kernel's shmem_enabled allows
    them), and a writer that takes them one fault at a time spends longer in the kernel than in AES:
    on a 218 MB model, decrypting into the memfd took 0.13 s, of which ~0.08 s were page faults.
    Here a second core maps the pages 8 MiB per call while the first one decrypts (0.085 s in all;
    docs/benchmarks-runtimes.md). The helper only asks the kernel to map pages: it never reads or
    writes their content, and it is stopped and joined before the mapping is sealed or unmapped.
    """

    def __init__(self, address: int, size: int) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(address, size), name="modelseal-prefault", daemon=True
        )
        self._thread.start()

    def _run(self, address: int, size: int) -> None:
        for offset in range(0, size, _PREFAULT_STEP):
            if self._stop.is_set():
                return
            if _madvise(address + offset, min(_PREFAULT_STEP, size - offset), MADV_POPULATE_WRITE):
                return  # an older kernel (EINVAL) or no memory: the writer faults the pages itself

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class MemfdSink:
    """A memfd that a payload is decrypted into through our own shared mapping (open_into's sink).

    For runtimes that read fastest from a path: after :meth:`freeze` others can only read it
    (``path``), while our mapping, made before the seal, still lets close() zeroize the pages —
    which F_SEAL_WRITE would forbid. Decrypting into the mapping avoids a copy into the memfd.
    A sink of :data:`PREFAULT_MIN` bytes or more maps its pages in on a helper thread while the
    payload is decrypted into it (:class:`_Prefault`). The mapping is MADV_DONTDUMP and
    MADV_DONTFORK: neither a core dump nor a child process gets the plaintext.
    """

    def __init__(self, name: str, size: int, *, prefault: bool = True) -> None:
        if size <= 0:
            raise ValueError("a memfd sink needs a non-empty payload")
        try:
            self._fd = os.memfd_create(name[:200], os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except (AttributeError, OSError) as e:
            raise MemfdError(f"memfd_create failed: {getattr(e, 'strerror', e)}") from None
        try:
            os.ftruncate(self._fd, size)
            self._map: mmap.mmap | None = mmap.mmap(self._fd, size, flags=mmap.MAP_SHARED)
        except OSError as e:
            os.close(self._fd)
            raise MemfdError(f"cannot size a memfd of {size} bytes: {e.strerror}") from None
        for advice in ("MADV_DONTDUMP", "MADV_DONTFORK"):
            with contextlib.suppress(OSError, AttributeError):
                self._map.madvise(getattr(mmap, advice))
        self._view: memoryview | None = memoryview(self._map)
        self._exports: list[memoryview] = []
        self._fd_open = True
        self._prefault: _Prefault | None = None
        if prefault and size >= PREFAULT_MIN and _madvise is not None:
            holder = ctypes.c_char.from_buffer(self._map)
            address = ctypes.addressof(holder)
            del holder  # an export would keep close() from unmapping
            self._prefault = _Prefault(address, size)

    @property
    def view(self) -> memoryview:
        if self._view is None:
            raise ValueError("memfd sink is closed")
        return self._view

    @property
    def closed(self) -> bool:
        return self._view is None

    @property
    def path(self) -> str:
        """Where this process (and only processes that can read its fds) opens the content."""
        if not self._fd_open:
            raise ValueError("the memfd's descriptor is closed")
        return f"/proc/self/fd/{self._fd}"

    def export(self, start: int, stop: int) -> memoryview:
        window = self.view[start:stop].toreadonly()
        self._exports.append(window)
        return window

    def _stop_prefault(self) -> None:
        if self._prefault is not None:
            self._prefault.stop()
            self._prefault = None

    def freeze(self) -> None:
        """From now on nobody can write, grow, shrink or unseal it through the fd or a new mapping."""
        self._stop_prefault()
        fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS, READERS_ONLY)

    def close_fd(self) -> None:
        """Close the descriptor now (``path`` stops existing); close() still zeroizes the content.

        Once the reader has the content, nothing can open the memfd any more: the pages live on
        only in our mapping until close().
        """
        if self._fd_open:
            self._fd_open = False
            os.close(self._fd)

    def close(self) -> None:
        self._stop_prefault()
        if self._view is None or self._map is None:
            return
        zero_fill(self._map)
        for window in self._exports:
            with contextlib.suppress(BufferError):
                window.release()
        self._view.release()
        self._view = None
        with contextlib.suppress(BufferError):
            self._map.close()
        self._map = None
        self.close_fd()
