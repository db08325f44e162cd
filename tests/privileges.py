"""Running a child with fewer privileges, to test what a non-root deployment sees."""

from __future__ import annotations


def drop_ipc_lock() -> None:
    """preexec_fn: lose CAP_IPC_LOCK at exec, so even root obeys RLIMIT_MEMLOCK (8 MiB here)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(24, 14, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, CAP_IPC_LOCK
        raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")
