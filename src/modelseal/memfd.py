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
import fcntl
import mmap
import os

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


class MemfdSink:
    """A memfd that a payload is decrypted into through our own shared mapping (open_into's sink).

    For runtimes that read fastest from a path: after :meth:`freeze` others can only read it
    (``path``), while our mapping, made before the seal, still lets close() zeroize the pages —
    which F_SEAL_WRITE would forbid. Decrypting into the mapping avoids a copy into the memfd.
    """

    def __init__(self, name: str, size: int) -> None:
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
        with contextlib.suppress(OSError, AttributeError):
            self._map.madvise(mmap.MADV_DONTDUMP)
        self._view: memoryview | None = memoryview(self._map)
        self._exports: list[memoryview] = []

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
        return f"/proc/self/fd/{self._fd}"

    def export(self, start: int, stop: int) -> memoryview:
        window = self.view[start:stop].toreadonly()
        self._exports.append(window)
        return window

    def freeze(self) -> None:
        """From now on nobody can write, grow, shrink or unseal it through the fd or a new mapping."""
        fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS, READERS_ONLY)

    def close(self) -> None:
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
        os.close(self._fd)
