"""Sealed memfds: an in-memory file written once, then frozen by the kernel, for code that wants a path.

A memfd lives on the kernel's internal shmem mount: it has no name in any filesystem a user can
browse and is never written to disk (only to swap, which mlock of a mapping prevents where permitted).
After :data:`SEALS` are applied nobody, not even this process, can change, truncate, grow or
unseal it: a reader that opens ``/proc/<pid>/fd/<n>`` for writing gets EPERM on every write.

F_SEAL_FUTURE_WRITE is not used: F_SEAL_WRITE is applied once the content is complete and with no
writable mapping outstanding, which is strictly stronger.
"""

from __future__ import annotations

import fcntl
import os

from .errors import ModelSealError

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
