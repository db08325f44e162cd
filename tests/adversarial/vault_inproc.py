"""The vault app in process for the adversarial vault tests: an ASGI client and a storage fault injector.

The app runs on httpx.ASGITransport (no server, no TLS), so the store under it can be watched and
made to fail. ``StorageFaults`` works at the DBAPI: the engine's new connections get a cursor class
of ours (sqlite3's connection ``factory``, psycopg's ``cursor_factory``), so every statement the
vault runs is seen, whether it goes through SQLAlchemy or straight to the driver's cursor (as a
hot path may), and COMMIT goes through the dialect's ``do_commit``. A chosen share of
transactions then fails with the driver's own "disk I/O error", at a random statement or at
COMMIT, exactly where a failing disk or a lost database connection would surface.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import event
from sqlalchemy.engine import Engine

BASE_URL = "https://vault.test"


def asgi_client(app: Any, timeout: float = 60) -> httpx.AsyncClient:
    """A client for ``app`` in process; an unhandled exception becomes the 500 a server would send."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=timeout)


@dataclass
class FaultStats:
    transactions: int = 0
    faulted: int = 0
    at_statement: int = 0
    at_commit: int = 0
    statements: int = 0


@dataclass
class _Fate:
    fail_at: int | None  # the statement index (0-based) that fails, or None: no fault
    seen: int = 0


FAILED = -1  # a fate whose statement already failed


@dataclass
class StorageFaults:
    """Fail ``rate`` of the engine's transactions while ``active``, seeded; ``log`` (if a list)
    gets the text of every statement run on the engine's connections, active or not.

    A doomed transaction fails at a statement drawn uniformly from its first ``spread`` statements;
    one that ends (COMMIT) before reaching it fails at the COMMIT itself. The fault is raised before
    the statement or the COMMIT reaches the database, as the driver's OperationalError. Which
    transaction gets which fate depends on thread scheduling; the sequence of fates is fixed by the
    seed. (A fault *after* a COMMIT succeeded, its answer lost, is the crash test's case:
    tests/vault/test_crash.py.)

    Installing it closes the engine's idle pooled connections, so every connection after it is
    one of ours; ``remove`` stops the faults and closes them again.
    """

    engine: Engine
    rate: float = 0.2
    seed: int = 7
    spread: int = 12
    # True: a doomed transaction's COMMIT succeeds and only then fails (the answer is lost, the
    # effect kept). Not a storage fault the vault can hide: it is how the tests prove that their
    # checks see an error answer whose effect persisted.
    lost_answers: bool = False
    active: bool = False
    log: list[str] | None = None
    stats: FaultStats = field(default_factory=FaultStats)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._fates: dict[int, _Fate] = {}
        dialect = self.engine.dialect
        self._error = dialect.loaded_dbapi.OperationalError
        self._connect_args = self._cursor_hook(dialect.name)
        event.listen(self.engine, "do_connect", self._on_connect)
        real_commit, real_rollback = dialect.do_commit, dialect.do_rollback

        def do_commit(dbapi_connection: Any) -> None:
            fate = self._end(dbapi_connection)
            if fate is not None and fate.fail_at is not None:
                with self._lock:
                    self.stats.at_commit += 1
                if self.lost_answers:
                    real_commit(dbapi_connection)
                raise self._error("disk I/O error (injected at COMMIT)")
            real_commit(dbapi_connection)

        def do_rollback(dbapi_connection: Any) -> None:
            self._end(dbapi_connection)
            real_rollback(dbapi_connection)

        # Instance attributes shadow the dialect's methods for this engine only.
        dialect.do_commit = do_commit  # type: ignore[method-assign]
        dialect.do_rollback = do_rollback  # type: ignore[method-assign]
        self.engine.pool.dispose()  # idle connections made before: closed, so none escapes us

    def _cursor_hook(self, backend: str) -> dict[str, Any]:
        owner = self
        if backend == "sqlite":
            import sqlite3

            class SqliteCursor(sqlite3.Cursor):
                def execute(self, sql: str, parameters: Any = (), /) -> Any:
                    owner._statement(self.connection, sql)
                    return super().execute(sql, parameters)

                def executemany(self, sql: str, parameters: Any, /) -> Any:
                    owner._statement(self.connection, sql)
                    return super().executemany(sql, parameters)

            class SqliteConnection(sqlite3.Connection):
                def cursor(self, factory: Any = SqliteCursor) -> Any:
                    return super().cursor(factory)

            return {"factory": SqliteConnection}
        import psycopg

        class PgCursor(psycopg.Cursor[Any]):
            def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
                owner._statement(self.connection, str(query))
                return super().execute(query, params, **kwargs)

            def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
                owner._statement(self.connection, str(query))
                super().executemany(query, params_seq, **kwargs)

        return {"cursor_factory": PgCursor}

    def _on_connect(self, dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        for name, value in self._connect_args.items():
            assert name not in cparams, f"the engine already sets {name}"
            cparams[name] = value

    def remove(self) -> None:
        self.active = False
        event.remove(self.engine, "do_connect", self._on_connect)
        for name in ("do_commit", "do_rollback"):
            self.engine.dialect.__dict__.pop(name, None)
        self.engine.pool.dispose()

    def _statement(self, dbapi_connection: Any, sql: str) -> None:
        if self.log is not None:
            with self._lock:
                self.log.append(sql)
        if not self.active:
            return
        with self._lock:
            self.stats.statements += 1
            fate = self._fates.get(id(dbapi_connection))
            if fate is None:
                doomed = self._rng.random() < self.rate
                at = 1 << 62 if self.lost_answers else self._rng.randrange(self.spread)  # never a statement
                fate = _Fate(at if doomed else None)
                self._fates[id(dbapi_connection)] = fate
                self.stats.transactions += 1
                self.stats.faulted += doomed
            index = fate.seen
            fate.seen += 1
            if fate.fail_at != index:
                return
            fate.fail_at = FAILED
            self.stats.at_statement += 1
        raise self._error("disk I/O error (injected)")

    def _end(self, connection: Any) -> _Fate | None:
        # COMMIT and ROLLBACK get the pool's proxy of the connection, statements the connection.
        dbapi_connection = getattr(connection, "dbapi_connection", connection)
        with self._lock:
            fate = self._fates.pop(id(dbapi_connection), None)
        if fate is not None and fate.fail_at == FAILED:
            # Already failed at a statement. As on a real database the rest of the transaction may
            # still commit (SQLite undoes only the failed statement): code that caught the error and
            # committed anyway would persist half an operation, which the tests would then find.
            return None
        return fate
