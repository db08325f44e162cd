"""The key release's statements, run on the session's DBAPI connection.

A key release runs ~8 statements in the writer's transaction. Through SQLAlchemy Core each costs
20-25 µs of CPU on top of the database's own work (compiled-cache lookup, execution context,
event dispatch, result wrapping; measured with SQLite: 22-25 µs against 1-4 µs for the same
statement on the sqlite3 connection), a quarter of the writer's time per release. Here the
statement is still written and compiled by SQLAlchemy (one definition for SQLite and PostgreSQL,
with its quoting and bind casts), once per dialect; only the execution skips Core's layers.

It runs on the session's own connection inside its transaction, after a flush (so it sees every
earlier write of the transaction, as Core would). A driver error is raised as SQLAlchemy's
exception (``IntegrityError`` for a unique index, which the release path relies on), without
the statement's parameters in its text.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Delete, Insert, Select, TextClause, Update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

Statement = Select[*tuple[Any, ...]] | Insert | Update | Delete | TextClause


class _Compiled:
    __slots__ = ("defaults", "order", "sql")

    def __init__(self, sql: str, defaults: dict[str, Any], order: tuple[str, ...] | None) -> None:
        self.sql = sql
        self.defaults = defaults  # values bound in the statement itself (LIMIT 1, uses + 1)
        self.order = order  # positional paramstyles (SQLite's qmark): the parameters' order


class HotStatement:
    """One prebuilt statement; ``keys`` are the columns an INSERT is given."""

    def __init__(self, statement: Statement, keys: Sequence[str] = ()) -> None:
        # Inline: no RETURNING of the new row's id, which nothing here reads.
        self.statement: Statement = statement.inline() if isinstance(statement, Insert) else statement
        self.keys = list(keys) or None
        self.columns: tuple[str, ...] = (
            tuple(str(c.key) for c in statement.selected_columns) if isinstance(statement, Select) else ()
        )
        self._by_dialect: weakref.WeakKeyDictionary[Dialect, _Compiled] = weakref.WeakKeyDictionary()

    def _compiled(self, dialect: Dialect) -> _Compiled:
        found = self._by_dialect.get(dialect)
        if found is None:
            compiled = self.statement.compile(dialect=dialect, column_keys=self.keys)
            defaults = {
                k: v for k, v in compiled.params.items() if v is not None and not compiled.binds[k].required
            }
            order = tuple(compiled.positiontup) if compiled.positiontup is not None else None
            found = self._by_dialect[dialect] = _Compiled(str(compiled), defaults, order)
        return found

    def run(self, session: Session, params: Mapping[str, Any]) -> Any:
        """Execute in ``session``'s transaction; the DBAPI cursor (rows not yet fetched)."""
        return self._execute(session, [params], many=False)

    def run_many(self, session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
        """Execute once per row, in one DBAPI executemany (psycopg pipelines it: one round trip)."""
        self._execute(session, rows, many=True)

    def _execute(self, session: Session, rows: Sequence[Mapping[str, Any]], *, many: bool) -> Any:
        session.flush()
        conn = session.connection()
        dialect = conn.dialect
        compiled = self._compiled(dialect)
        args = [self._args(compiled, params) for params in rows]
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None  # a connection in a transaction is checked out
        cursor = dbapi.cursor()
        try:
            if many:
                cursor.executemany(compiled.sql, args)
            else:
                cursor.execute(compiled.sql, args[0])
        except dialect.loaded_dbapi.Error as e:
            invalidated = dialect.is_disconnect(e, dbapi, cursor)
            if invalidated:
                conn.invalidate(e)
            raise DBAPIError.instance(
                compiled.sql,
                None,
                e,
                dialect.loaded_dbapi.Error,
                hide_parameters=True,
                connection_invalidated=invalidated,
                dialect=dialect,
            ) from e
        return cursor

    @staticmethod
    def _args(compiled: _Compiled, params: Mapping[str, Any]) -> Any:
        values = {**compiled.defaults, **params} if compiled.defaults else params
        return tuple(values[k] for k in compiled.order) if compiled.order is not None else values

    def first(self, session: Session, params: Mapping[str, Any]) -> Any:
        """The first row (a tuple), or None."""
        return self.run(session, params).fetchone()

    def scalar(self, session: Session, params: Mapping[str, Any]) -> Any:
        row = self.run(session, params).fetchone()
        return row[0] if row is not None else None

    def mapping(self, session: Session, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The first row as {column: value}, or None."""
        row = self.run(session, params).fetchone()
        return dict(zip(self.columns, row, strict=True)) if row is not None else None

    def mappings(self, session: Session, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.run(session, params).fetchall()]
