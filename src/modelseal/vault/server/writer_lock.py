"""One queue for SQLite's writers, in this process and across processes (`vault serve --workers`).

SQLite admits one writer at a time; BEGIN IMMEDIATE in another connection retries from SQLite's
busy handler, which sleeps 1, 2, 5, 10 ... 100 ms between tries. Under load the group committer
commits back to back, so the lock is free only for a few microseconds between its transactions:
a sleeping writer (an admin request, another worker process) keeps missing those gaps and waits
hundreds of milliseconds or times out (two workers on one SQLite file: p95 0.4-1 s, measured).
An exclusive flock on a file beside the database, taken before BEGIN IMMEDIATE, queues the
writers in the kernel instead: a waiter wakes the moment the holder lets go. A process that dies
holding it (kill -9) loses it with its file descriptors.

PostgreSQL needs none of this: its advisory lock already queues writers (store.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from sqlalchemy.engine import Engine

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
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return contextlib.nullcontext
    if database.startswith("file:"):  # a URI filename: no plain path to put the lock beside
        return contextlib.nullcontext
    path = f"{database}-writer.lock"
    return lambda: _flocked(path)
