"""The vault's operations on master keys, data keys and tokens, and the audit append every write
makes (tables in schema.py, connections and migrations in engine.py, the chain's hashing in audit.py).

Each operation runs in ONE transaction together with its audit record, so an effect without its
record (or a record without its effect) can never be committed: if the audit insert fails, the
whole transaction rolls back and nothing is released. Refused operations get an audit record of
their own afterwards (best effort: the refusal is what the caller sees either way).

SQLite (WAL, synchronous=FULL) is the default; the URL may name PostgreSQL (several vault processes
on one database). Every write transaction appends to the one audit chain (read the head, insert the
next record), so writers are serialised by design, and they are serialised when they *begin*: on
SQLite with BEGIN IMMEDIATE (two deferred transactions would fork the chain or fail on lock upgrade),
on PostgreSQL with a transaction-scoped advisory lock. Taking the lock first, not at the audit
append, means everything a write transaction reads (the key's latest version before a rotation, the
failure count before a lockout, a licence's uses before a release) is what it writes against: under
READ COMMITTED each statement after the lock sees every commit made before it, with no lost updates
and no SERIALIZABLE retry loops. The unique constraints (audit seq, key versions, names, the release
nonce index) stay as the backstop: a bug in the locking would fail a request, never fork the chain.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    bindparam,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ...keyrelease import datakeys
from ...keyrelease.wire import DEFAULT_DOMAIN
from ..errors import AuditChainError, KeyServiceError, NotFound, PermissionDenied, Unavailable
from . import row_macs, writer_lock
from .audit import AuditLog
from .audit_anchor import AuditAnchor
from .barrier import Barrier
from .callers import ROLES, Principal, new_token, token_hash
from .engine import sqlite_file, storage_error
from .hot_sql import HotStatement
from .row_macs import BARRIER_KEY, RowTampered
from .schema import AuditRecord, Domain, MasterKey, MasterKeyVersion, Token, now
from .storage_guard import MIN_FREE_BYTES, StorageGuard

KEY_TYPES = ("aes256-gcm",)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
T = TypeVar("T")


# Prebuilt statements of the hot paths (each release reads a key version and appends a record),
# run on the DBAPI connection (hot_sql.py).
_MATERIAL = HotStatement(
    select(MasterKeyVersion.material).where(
        MasterKeyVersion.key_id == bindparam("key_id"), MasterKeyVersion.version == bindparam("version")
    )
)


@dataclass(frozen=True)
class KeyInfo:
    name: str
    type: str
    created: str
    latest_version: int
    min_decryption_version: int
    disabled: bool
    deletion_allowed: bool
    versions: dict[int, str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "created": self.created,
            "latest_version": self.latest_version,
            "min_decryption_version": self.min_decryption_version,
            "disabled": self.disabled,
            "deletion_allowed": self.deletion_allowed,
            "versions": {str(v): t for v, t in sorted(self.versions.items())},
        }


@dataclass(frozen=True)
class DataKey:
    key_name: str
    key_version: int
    wrapped: bytes
    plaintext: bytes


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise KeyServiceError(
            "a key name is 1-128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit",
            code="invalid_name",
        )


class Store:
    def __init__(self, engine: Engine, barrier: Barrier, anchor: AuditAnchor | None = None) -> None:
        self.engine = engine
        self.barrier = barrier
        self.audit = AuditLog(anchor)
        self._writer = engine.execution_options(vault_write=True)
        # SQLite: writers queue on a file lock before BEGIN IMMEDIATE (writer_lock.py).
        self._writer_lock = writer_lock.for_engine(engine)
        self.guard = StorageGuard(sqlite_file(engine), self._checkpoint)
        self.guard.watch(engine)

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        self.guard.check()
        with self._writer_lock(), Session(self._writer, expire_on_commit=False) as session:
            session.info[BARRIER_KEY] = self.barrier  # rows that decide are bound and checked
            with session.begin():
                yield session
            # A commit into a WAL someone deleted would be gone at the next start: not acknowledged.
            self.guard.check()
            # Still under the writer lock, so the anchor sees the heads in commit order.
            self.audit.committed(session)

    @contextmanager
    def write_batch(self) -> Iterator[Session]:
        """``write_session`` for a group of key releases (AuditLog.batch)."""
        with self.write_session() as session:
            self.audit.batch(session)
            yield session

    def check_integrity(self) -> None:
        """Fail closed if the database lost what this vault committed (AuditChainError) or holds
        rows that decide access without a MAC (RowTampered)."""
        self.audit.check_anchor(self.engine)
        with self.read_session() as session:
            unbound = row_macs.unbound(session)
        if unbound:
            table, row = unbound[0]
            raise RowTampered(table, f"{row} (and {len(unbound) - 1} more)" if len(unbound) > 1 else row)

    def _checkpoint(self) -> str:
        """Copy every committed transaction from the WAL into the database file (StorageGuard)."""
        with self._writer_lock(), self.engine.connect() as conn:
            busy, _frames, _done = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
        if busy:
            return "the checkpoint was blocked: some commits may be only in the deleted WAL"
        return "every committed transaction is in the database file; restart the vault"

    def check_writable(self) -> None:
        """Raise Unavailable unless a write transaction could commit now (readiness)."""
        self.guard.check()
        free = self.guard.free_bytes()
        if free is not None and free < MIN_FREE_BYTES:
            raise Unavailable(f"the database's disk is full ({free} bytes free)", code="storage_full")
        try:
            with self._writer_lock(), self._writer.connect() as conn, conn.begin():
                pass  # BEGIN IMMEDIATE / the writers' lock: refused on a read-only or locked database
        except DBAPIError as e:
            raise storage_error(e) from None
        self.guard.check()

    def reanchor_audit(self) -> int:
        """Anchor the current head whatever was anchored (vault audit anchor); the record anchored."""
        anchor = self.audit.anchor
        if anchor is None:
            raise KeyServiceError("this store has no data folder to keep an audit anchor in")
        before = None
        try:
            previous: dict[str, Any] = {"previous": None}
            before = anchor.read()
            if before is not None:
                previous = {"previous_seq": before.seq, "previous_hash": before.hash}
        except AuditChainError:
            previous = {"previous": "unreadable"}
        with self.write_session() as session:
            # Rows of a vault made before row MACs are bound as they are (the operator vouches for
            # them); a vault that had an anchor binds every row itself, so there a row without one
            # was changed outside the vault and stays refused.
            bound = row_macs.bind_unbound(session, self.barrier) if before is None else 0
            self.audit.record(session, DEFAULT_DOMAIN, "audit.anchor", "cli", rows_bound=bound, **previous)
            head = self.audit.head(session)
        assert head is not None  # the record just written
        anchor.reset(head)
        return head.seq

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            session.info[BARRIER_KEY] = self.barrier
            yield session

    def secret_digest(self, purpose: str, secret: bytes) -> str:
        """How a secret appears in the audit: an HMAC under the root, never the secret."""
        return self.barrier.hmac(purpose, secret).hex()

    def operation(self, who: Principal, op: str, target: str, fn: Callable[[Session], T]) -> T:
        try:
            with self.write_session() as session:
                return fn(session)
        except KeyServiceError as e:
            if e.status in (400, 403, 404, 409) or isinstance(e, RowTampered):
                self.record_refusal(who, op, target, e)
            raise

    def record_refusal(self, who: Principal, op: str, target: str, error: KeyServiceError) -> None:
        try:
            with self.write_session() as session:
                self.audit.record(session, who.domain, op, who.accessor, target=target, outcome=error.code)
        except Exception:  # noqa: S110 - the refusal stands whether or not it could be recorded
            pass

    # --- bootstrap and auth ----------------------------------------------------------------------

    def domain_id(self, session: Session, name: str) -> int:
        found = session.execute(select(Domain.id).where(Domain.name == name)).scalar()
        if found is None:
            raise NotFound(f"no domain {name!r}")
        return found

    def bootstrap_admin(self, domain: str = DEFAULT_DOMAIN) -> str:
        """The first admin token (init only); returns it once, stores only its hash."""
        token = new_token()
        with self.write_session() as session:
            domain_id = self.domain_id(session, domain)
            accessor = self._insert_token(session, token, "admin", domain_id, "initial admin")
            self.audit.record(
                session, domain, "token.bootstrap", "init", token_accessor=accessor, role="admin"
            )
        return token

    def _insert_token(self, session: Session, token: str, role: str, domain_id: int, name: str) -> str:
        accessor = os.urandom(8).hex()
        session.add(
            Token(
                accessor=accessor,
                token_hash=token_hash(token),
                role=role,
                domain_id=domain_id,
                display_name=name,
                created=now(),
            )
        )
        session.flush()
        return accessor

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise PermissionDenied("missing bearer token", code="unauthenticated", status=401)
        with self.read_session() as session:
            row = session.execute(
                select(Token, Domain.name)
                .join(Domain, Domain.id == Token.domain_id)
                .where(Token.token_hash == token_hash(token), Token.revoked.is_(False))
            ).first()
        if row is None:
            raise PermissionDenied("unknown or revoked token", code="unauthenticated", status=401)
        tok, domain = row
        return Principal(tok.accessor, tok.role, domain, tok.domain_id)

    # --- tokens ----------------------------------------------------------------------------------

    def create_token(self, who: Principal, role: str, name: str = "") -> tuple[str, str]:
        if role not in ROLES:
            raise KeyServiceError(f"role must be one of {', '.join(ROLES)}", code="invalid_role")
        # Checked here, not left to the database: PostgreSQL refuses NUL in text (SQLite stores it),
        # and both must give the same clean 400; control characters would also garble logs.
        if len(name) > 128 or not name.isprintable():
            raise KeyServiceError("a token name is at most 128 printable characters", code="invalid_name")
        token = new_token()

        def run(session: Session) -> str:
            accessor = self._insert_token(session, token, role, who.domain_id, name)
            self.audit.record(
                session, who.domain, "token.create", who.accessor, token_accessor=accessor, role=role
            )
            return accessor

        return token, self.operation(who, "token.create", role, run)

    # --- master keys -----------------------------------------------------------------------------

    def _key(self, session: Session, who: Principal, name: str) -> MasterKey:
        check_name(name)
        key = session.execute(
            select(MasterKey).where(MasterKey.domain_id == who.domain_id, MasterKey.name == name)
        ).scalar()
        if key is None:
            raise NotFound(f"no key {name!r}")
        return key

    def _info(self, session: Session, key: MasterKey) -> KeyInfo:
        versions = session.execute(
            select(MasterKeyVersion.version, MasterKeyVersion.created).where(
                MasterKeyVersion.key_id == key.id
            )
        ).all()
        return KeyInfo(
            key.name,
            key.type,
            key.created,
            key.latest_version,
            key.min_decryption_version,
            key.disabled,
            key.deletion_allowed,
            {v: c for v, c in versions},
        )

    def _row(self, key: MasterKey, version: int) -> str:
        return f"{key.domain_id}/{key.name}/{version}"

    def _add_version(self, session: Session, key: MasterKey, version: int) -> None:
        material = self.barrier.encrypt(
            os.urandom(32), table="master_key_versions", row=self._row(key, version), purpose=key.type
        )
        session.add(MasterKeyVersion(key_id=key.id, version=version, created=now(), material=material))

    def _material(self, session: Session, key: MasterKey, version: int) -> bytes:
        # HotStatement flushes: a version added in this transaction is read too.
        blob = _MATERIAL.scalar(session, {"key_id": key.id, "version": version})
        if blob is None:
            raise NotFound(f"key {key.name!r} has no version {version}")
        return self.barrier.decrypt(
            blob, table="master_key_versions", row=self._row(key, version), purpose=key.type
        )

    def create_key(self, who: Principal, name: str, key_type: str = "aes256-gcm") -> KeyInfo:
        check_name(name)
        if key_type not in KEY_TYPES:
            raise KeyServiceError(f"key type must be one of {', '.join(KEY_TYPES)}", code="invalid_type")

        def run(session: Session) -> KeyInfo:
            exists = session.execute(
                select(MasterKey.id).where(MasterKey.domain_id == who.domain_id, MasterKey.name == name)
            ).scalar()
            if exists is not None:
                raise KeyServiceError(f"key {name!r} exists", code="exists", status=409)
            key = MasterKey(
                domain_id=who.domain_id,
                name=name,
                type=key_type,
                created=now(),
                latest_version=1,
                min_decryption_version=1,
                disabled=False,
                deletion_allowed=False,
            )
            session.add(key)
            session.flush()
            self._add_version(session, key, 1)
            self.audit.record(session, who.domain, "key.create", who.accessor, key=name, version=1)
            return self._info(session, key)

        return self.operation(who, "key.create", name, run)

    def list_keys(self, who: Principal) -> list[str]:
        def run(session: Session) -> list[str]:
            names = session.execute(
                select(MasterKey.name).where(MasterKey.domain_id == who.domain_id).order_by(MasterKey.name)
            ).scalars()
            self.audit.record(session, who.domain, "key.list", who.accessor)
            return list(names)

        return self.operation(who, "key.list", "", run)

    def read_key(self, who: Principal, name: str) -> KeyInfo:
        def run(session: Session) -> KeyInfo:
            info = self._info(session, self._key(session, who, name))
            self.audit.record(session, who.domain, "key.read", who.accessor, key=name)
            return info

        return self.operation(who, "key.read", name, run)

    def rotate_key(self, who: Principal, name: str) -> KeyInfo:
        def run(session: Session) -> KeyInfo:
            key = self._key(session, who, name)
            key.latest_version += 1
            self._add_version(session, key, key.latest_version)
            session.flush()
            self.audit.record(
                session, who.domain, "key.rotate", who.accessor, key=name, version=key.latest_version
            )
            return self._info(session, key)

        return self.operation(who, "key.rotate", name, run)

    def config_key(
        self, who: Principal, name: str, *, min_decryption_version: int | None, disabled: bool | None
    ) -> KeyInfo:
        def run(session: Session) -> KeyInfo:
            key = self._key(session, who, name)
            if min_decryption_version is not None:
                if not 1 <= min_decryption_version <= key.latest_version:
                    raise KeyServiceError(
                        f"min_decryption_version must be within 1..{key.latest_version}",
                        code="invalid_version",
                    )
                key.min_decryption_version = min_decryption_version
            if disabled is not None:
                key.disabled = disabled
            session.flush()
            self.audit.record(
                session,
                who.domain,
                "key.config",
                who.accessor,
                key=name,
                min_decryption_version=key.min_decryption_version,
                disabled=key.disabled,
            )
            return self._info(session, key)

        return self.operation(who, "key.config", name, run)

    def _usable(self, key: MasterKey) -> None:
        if key.disabled:
            raise KeyServiceError(f"key {key.name!r} is disabled", code="key_disabled", status=409)

    def datakey(self, who: Principal, name: str, *, plaintext: bool) -> DataKey:
        """A fresh 256-bit MEK wrapped under the latest version (the `vault` stanza's body)."""

        def run(session: Session) -> DataKey:
            key = self._key(session, who, name)
            self._usable(key)
            version = key.latest_version
            mek = os.urandom(datakeys.DATA_KEY_SIZE)
            wrapped = datakeys.wrap(self._material(session, key, version), name, version, mek)
            self.audit.record(
                session,
                who.domain,
                "key.datakey",
                who.accessor,
                key=name,
                version=version,
                plaintext_returned=plaintext,
                data_key_hmac=self.secret_digest("data key", mek),
                wrapped_sha256=hashlib.sha256(wrapped).hexdigest(),
            )
            return DataKey(name, version, wrapped, mek)

        return self.operation(who, "key.datakey", name, run)

    def unwrap(self, who: Principal, name: str, version: int, wrapped: bytes) -> bytes:
        """The MEK of a `vault` stanza body. Admin/operator only in this increment (see app.py)."""

        def run(session: Session) -> bytes:
            key = self._key(session, who, name)
            self._usable(key)
            if version < key.min_decryption_version:
                raise KeyServiceError(
                    f"key {name!r} version {version} is below min_decryption_version "
                    f"{key.min_decryption_version}",
                    code="version_retired",
                    status=409,
                )
            mek = datakeys.unwrap(self._material(session, key, version), name, version, wrapped)
            self.audit.record(
                session,
                who.domain,
                "key.unwrap",
                who.accessor,
                key=name,
                version=version,
                data_key_hmac=self.secret_digest("data key", mek),
                wrapped_sha256=hashlib.sha256(wrapped).hexdigest(),
            )
            return mek

        return self.operation(who, "key.unwrap", name, run)

    def record(self, who: Principal, op: str, **details: Any) -> None:
        """An audit record for an operation with no stored effect (seal, audit reads)."""
        with self.write_session() as session:
            self.audit.record(session, who.domain, op, who.accessor, **details)

    # --- audit -----------------------------------------------------------------------------------

    def audit_records(self, who: Principal, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        with self.read_session() as session:
            rows = session.execute(
                select(AuditRecord)
                .where(AuditRecord.seq > after, AuditRecord.domain == who.domain)
                .order_by(AuditRecord.seq)
                .limit(max(1, min(limit, 1000)))
            ).scalars()
            return [
                {"seq": r.seq, "event": json.loads(r.event), "prev_hash": r.prev_hash, "hash": r.hash}
                for r in rows
            ]


