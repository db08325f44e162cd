"""mlock for plaintext views, and the policy that says what happens when the kernel refuses.

Works on any view, read-only included (``SealedModel.read()`` windows, whose address
ctypes.from_buffer cannot take), so open() and Crypto-fs lock the same way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import resource
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import MemoryLockError

_CAP_IPC_LOCK = 14
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4


class _PyBuffer(ctypes.Structure):
    _fields_ = (
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.py_object),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    )


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = (ctypes.POINTER(_PyBuffer),)
_release_buffer.restype = None

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mlock.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mlock.restype = ctypes.c_int
_libc.munlock.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.munlock.restype = ctypes.c_int
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_libc.prctl.restype = ctypes.c_int


def address(view: memoryview) -> int:
    """The address of the first byte of a C-contiguous buffer, read-only or not."""
    raw = _PyBuffer()
    if _get_buffer(view, ctypes.byref(raw), 0) != 0:  # PyBUF_SIMPLE
        raise ValueError("object does not expose a contiguous buffer")
    try:
        return int(raw.buf or 0)
    finally:
        _release_buffer(ctypes.byref(raw))


def mlock(view: memoryview) -> None:
    """Lock the pages under ``view`` in RAM; raises OSError (ENOMEM, EPERM, EAGAIN) on refusal."""
    if not len(view):
        return
    if _libc.mlock(address(view), view.nbytes) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def munlock(view: memoryview) -> None:
    if len(view):
        _libc.munlock(address(view), view.nbytes)


def set_not_dumpable() -> None:
    """No core dumps, and same-uid processes can no longer ptrace us or read /proc/<pid>/mem."""
    _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def no_core_files() -> None:
    """A crash of this process writes no core file (it would hold keys and plaintext). For a process
    that must stay dumpable (readable through /proc by its own uid)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def die_with_parent() -> None:
    """In a child between fork and exec: SIGKILL when the parent dies, so a runner that crashes
    never leaves its command running without lease checks."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def has_ipc_lock_capability() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_IPC_LOCK & 1)
    except OSError:
        pass
    return False


def memlock_limit() -> int | None:
    """RLIMIT_MEMLOCK (soft) in bytes; None when unlimited or when CAP_IPC_LOCK ignores it."""
    if has_ipc_lock_capability():
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return None if soft == resource.RLIM_INFINITY else soft


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n < 1 << 30 else f"{n / (1 << 30):.1f} GiB"


def default_notice(message: str) -> None:
    print(f"modelseal: {message}", file=sys.stderr, flush=True)


@dataclass
class LockPolicy:
    """Lock when permitted; say so loudly when not; ``require`` turns a refusal into an error."""

    require: bool = False
    notice: Callable[[str], None] = default_notice
    locked: bool = False
    require_hint: str = "--require-mlock"

    def _refused(self, detail: str) -> None:
        text = (
            f"memory lock (mlock) refused: {detail}; the plaintext may be swapped out to disk. "
            "Raise the limit (ulimit -l, systemd LimitMEMLOCK=) or grant CAP_IPC_LOCK"
        )
        if self.require:
            raise MemoryLockError(text)
        self.notice(text + f"; {self.require_hint} makes this fatal")

    def precheck(self, needed: int) -> bool:
        """Before any decryption: refuse early under --require-mlock if the limit cannot fit."""
        limit = memlock_limit()
        if limit is not None and needed > limit:
            self._refused(f"RLIMIT_MEMLOCK is {_mib(limit)} and the model(s) need {_mib(needed)}")
            return False
        return True

    def lock(self, views: Sequence[memoryview]) -> bool:
        done: list[memoryview] = []
        try:
            for view in views:
                mlock(view)
                done.append(view)
        except OSError as e:
            for view in done:
                munlock(view)
            limit = memlock_limit()
            if limit is not None and e.errno in (errno.ENOMEM, errno.EPERM, errno.EAGAIN):
                reason = f"RLIMIT_MEMLOCK is {_mib(limit)}, {_mib(sum(v.nbytes for v in views))} needed"
            else:
                reason = e.strerror or "mlock failed"
            self._refused(reason)
            return False
        self.locked = True
        return True
