"""One queue for SQLite's writers.

SQLite admits one writer at a time; BEGIN IMMEDIATE in another connection retries from SQLite's
busy handler, which sleeps 1, 2, 5, 10 ... 100 ms between tries. Under load the group committer
commits back to back, so the lock is free only for a few microseconds between its transactions:
a sleeping writer (an admin request, a lease check) keeps missing those gaps and waits hundreds of
milliseconds or times out (measured with two writer processes: p95 0.4-1 s). An exclusive flock on
a file beside the database, taken before BEGIN IMMEDIATE, queues the writers in the kernel
instead: a waiter wakes the moment the holder lets go. A process that dies holding it (kill -9)
loses it with its file descriptors.

The vault holds its SQLite file exclusively (engine.py), so the writers queued here are its own
threads. PostgreSQL needs none of this: its advisory lock already queues writers (store.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from sqlalchemy.engine import Engine

from .engine import sqlite_file

WriterLock = Callable[[], AbstractContextManager[None]]


@contextlib.contextmanager
def _flocked(path: str) -> Iterator[None]:
    # A descriptor of its own per transaction: flock excludes open file descriptions, so two
    # threads of one process queue like two processes.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks without the GIL
        yield
    finally:
        os.close(fd)  # releases the lock


def for_engine(engine: Engine) -> WriterLock:
    """The lock to hold around each write transaction on ``engine`` (a no-op but for SQLite files)."""
    database = sqlite_file(engine)
    if database is None:
        return contextlib.nullcontext
    path = f"{database}-writer.lock"
    return lambda: _flocked(path)
