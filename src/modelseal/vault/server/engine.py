"""Connecting to the vault's database: SQLite (WAL, synchronous=FULL, BEGIN IMMEDIATE) by default,
PostgreSQL for several vault processes (a transaction-scoped advisory lock serialises writers), and
the Alembic migrations."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from ..errors import KeyServiceError, Unavailable

# pg_advisory_xact_lock key of the vault's writers ("msealv01"). Transaction-scoped: PostgreSQL
# releases it at commit or rollback, and when a vault process dies mid-transaction (its connection
# closes), so a kill -9 never leaves it held; it also works behind PgBouncer's transaction pooling.
PG_WRITE_LOCK = 0x6D7365616C763031

def sqlite_url(data_dir: str | os.PathLike[str]) -> str:
    return f"sqlite:///{Path(data_dir) / 'vault.db'}"

def make_engine(url: str, *, shared_sqlite: bool = False) -> Engine:
    """An engine for SQLite or PostgreSQL (psycopg 3); any other database is refused.

    Only these two are held to the writer serialisation above; another dialect would fork the
    audit chain under concurrency, so it fails closed here. A SQLite file is held exclusively by
    this process unless ``shared_sqlite`` (`vault serve --sqlite-shared`, for inspection tools).
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        # Never echo the URL: it may carry a password.
        raise KeyServiceError(
            "--database is not a database URL (sqlite:///FILE or postgresql+psycopg://HOST/DB)",
            code="invalid_database",
        ) from None
    if parsed.drivername in ("postgresql", "postgres", "postgres+psycopg"):  # psycopg 3 is what we ship
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise KeyServiceError(
            f"unsupported database {backend!r}: the vault runs on sqlite or postgresql",
            code="invalid_database",
        )
    if backend == "postgresql":
        try:
            # pre_ping: a restarted or failed-over server costs one retry, not a failed request.
            engine = create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": 10})
        except ImportError:
            from ...errors import RuntimeUnavailableError

            raise RuntimeUnavailableError("psycopg", "vault") from None
        _configure_postgresql(engine)
        return engine
    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:") and not shared_sqlite:
        # The unix-excl VFS: this process holds the database exclusively (one vault process per
        # SQLite file; PostgreSQL is the database for several) and keeps the WAL index in its heap,
        # so there is no mapped -shm file that a truncation, a full disk or a read-only remount
        # could turn into SIGBUS. Its connections share that index, so WAL readers still run
        # beside the writer.
        parsed = parsed.set(database=f"file:{database}", query={"vfs": "unix-excl", "uri": "true"})
    engine = create_engine(parsed)
    _configure_sqlite(engine)
    return engine


def sqlite_file(engine: Engine) -> Path | None:
    """The SQLite database file of ``engine`` (None for PostgreSQL or an in-memory database)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return Path(database.removeprefix("file:").split("?", 1)[0])

def _configure_postgresql(engine: Engine) -> None:
    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("vault_write", False):
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})")

def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own transaction handling would defer BEGIN; we issue it ourselves below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "busy_timeout=10000",  # first: the next pragma already waits for a lock
            "journal_mode=WAL",
            "synchronous=FULL",  # an acknowledged key or audit record survives power loss
            "foreign_keys=ON",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("vault_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

def upgrade_schema(engine: Engine) -> None:
    """Apply the packaged Alembic migrations; no alembic.ini is needed."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    # As a writer (BEGIN IMMEDIATE / the advisory lock), in one transaction (both databases have
    # transactional DDL): vault processes starting together on one database migrate it once, the
    # others wait and then find it at head; a failed migration leaves the previous schema intact.
    try:
        with engine.execution_options(vault_write=True).begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    except OperationalError as e:
        raise storage_error(e) from None

def storage_error(error: DBAPIError) -> Unavailable:
    """What a client or the CLI is told when the database refuses: one line, the documented shape."""
    reason = driver_reason(error)
    if "locked" in reason:
        return Unavailable(
            f"the database is in use ({reason}): a running vault holds its SQLite file; stop it first",
            code="storage_locked",
        )
    if "readonly" in reason or "read-only" in reason:
        return Unavailable(f"the database is read-only ({reason})", code="storage_read_only")
    if "full" in reason:
        return Unavailable(f"the database's disk is full ({reason})", code="storage_full")
    return Unavailable(f"the database is not reachable: {reason}", code="storage_unavailable")


def driver_reason(error: DBAPIError) -> str:
    """The driver's first line (libpq and sqlite never echo a password); not SQLAlchemy's, which
    appends the statement and its parameters."""
    text = str(error.orig).strip()
    return text.splitlines()[0][:200] if text else type(error.orig).__name__
