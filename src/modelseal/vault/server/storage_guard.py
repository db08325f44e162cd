"""Whether the database files under a running vault are still the ones it opened, and writable.

SQLite keeps writing into files it has open even after someone deletes or replaces them: deleting
`vault.db-wal` while the vault runs made every later commit go into an unlinked file, and all of
them (acknowledged, with their audit records) vanished at the next start. So the vault notes the
device and inode of the database and its WAL once they exist, and before each write transaction and
after each commit compares them with what the paths name now. A mismatch is permanent for this
process: writes are refused (503 ``storage_lost``), readiness answers 503, and one log line says
why; the commit that found it is not acknowledged (the caller gets the 503, not a success the next
start would forget). When it is the WAL that went, the vault still holds it open: one checkpoint
copies every committed transaction from it into `vault.db` (SQLite reads the unlinked file through
its descriptor), so no acknowledged write is lost; a restart then starts a fresh WAL.

PostgreSQL has no such files here: the guard does nothing for it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from ..errors import Unavailable

_log = logging.getLogger("modelseal.vault")
# Below this much free space a write may fail half-way: readiness says so before it does.
MIN_FREE_BYTES = 4 << 20


class StorageLost(Unavailable):
    """The database or its WAL was deleted or replaced under the running vault."""

    code = "storage_lost"

    def __init__(self, reason: str) -> None:
        super().__init__(f"the vault's database files changed under it ({reason}): it refuses writes")


class StorageGuard:
    """The identity of one SQLite database's files, checked around writes."""

    def __init__(self, database: Path | None, rescue: Callable[[], str] | None = None) -> None:
        self.database = database
        self._rescue = rescue
        self._lock = threading.Lock()
        self._known: dict[Path, tuple[int, int]] = {}
        self._lost: str | None = None
        self._connections = 0

    def watch(self, engine: Engine) -> None:
        """Count ``engine``'s open connections. When the last one closes SQLite checkpoints and
        deletes the WAL itself: then, and only then, a missing or new WAL is not a fault."""
        if self.database is None:
            return
        wal = self.database.with_name(self.database.name + "-wal")
        pool: Any = engine.pool
        self._connections = int(getattr(pool, "checkedin", lambda: 0)()) + int(
            getattr(pool, "checkedout", lambda: 0)()
        )

        def opened(*_: object) -> None:
            with self._lock:
                self._connections += 1

        def closed(*_: object) -> None:
            with self._lock:
                self._connections -= 1
                if self._connections <= 0:
                    self._connections = 0
                    self._known.pop(wal, None)

        event.listen(engine, "connect", opened)
        event.listen(engine, "close", closed)
        event.listen(engine, "close_detached", closed)

    @property
    def lost(self) -> str | None:
        return self._lost

    def _identity(self, path: Path) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def check(self) -> None:
        """Raise StorageLost if a file this vault wrote to is gone or is another file now."""
        if self.database is None:
            return
        if self._lost is None:
            with self._lock:
                for path in (self.database, self.database.with_name(self.database.name + "-wal")):
                    now = self._identity(path)
                    known = self._known.get(path)
                    if known is None:
                        if now is not None:
                            self._known[path] = now
                        elif path == self.database:
                            self._lose(f"{path.name} is missing")
                    elif now != known:
                        self._lose(f"{path.name} was {'deleted' if now is None else 'replaced'}")
                        if path != self.database and self._rescue is not None:
                            # In a thread: this one may hold the writer lock the rescue needs.
                            threading.Thread(target=self._run_rescue, daemon=True).start()
        if self._lost is not None:
            raise StorageLost(self._lost)

    def _lose(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
            _log.error("the vault's database files changed under it (%s): refusing writes", reason)

    def _run_rescue(self) -> None:
        try:
            outcome = self._rescue() if self._rescue is not None else ""
        except Exception as e:  # the refusal stands either way
            outcome = f"failed ({type(e).__name__}): restore from a backup"
        _log.error("WAL rescue: %s", outcome)

    def free_bytes(self) -> int | None:
        if self.database is None:
            return None
        st = os.statvfs(self.database.parent)
        return st.f_bavail * st.f_frsize
