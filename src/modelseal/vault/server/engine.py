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

def make_engine(url: str) -> Engine:
    """An engine for SQLite or PostgreSQL (psycopg 3); any other database is refused.

    Only these two are held to the writer serialisation above; another dialect would fork the
    audit chain under concurrency, so it fails closed here.
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
    engine = create_engine(parsed)
    _configure_sqlite(engine)
    return engine

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
            "journal_mode=WAL",
            "synchronous=FULL",  # an acknowledged key or audit record survives power loss
            "foreign_keys=ON",
            "busy_timeout=10000",
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
        raise Unavailable(
            f"the database is not reachable: {driver_reason(e)}", code="storage_unavailable"
        ) from None

def driver_reason(error: DBAPIError) -> str:
    """The driver's first line (libpq and sqlite never echo a password); not SQLAlchemy's, which
    appends the statement and its parameters."""
    text = str(error.orig).strip()
    return text.splitlines()[0][:200] if text else type(error.orig).__name__
