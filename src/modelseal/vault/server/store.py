"""Storage of the vault: schema (SQLAlchemy 2 ORM), connection settings, and every operation.

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

import base64
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ...keyrelease import datakeys
from ...keyrelease.wire import DEFAULT_DOMAIN
from ..errors import AuditChainError, KeyServiceError, NotFound, PermissionDenied, Unavailable
from . import writer_lock
from .barrier import Barrier
from .hot_sql import HotStatement

ROLES = ("admin", "operator", "auditor")
KEY_TYPES = ("aes256-gcm",)
GENESIS_HASH = "0" * 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TOKEN_PREFIX = "msv."  # noqa: S105 - a name, not a secret
# pg_advisory_xact_lock key of the vault's writers ("msealv01"). Transaction-scoped: PostgreSQL
# releases it at commit or rollback, and when a vault process dies mid-transaction (its connection
# closes), so a kill -9 never leaves it held; it also works behind PgBouncer's transaction pooling.
PG_WRITE_LOCK = 0x6D7365616C763031
T = TypeVar("T")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Base(DeclarativeBase):
    pass


class Domain(Base):
    __tablename__ = "domains"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created: Mapped[str] = mapped_column(String(32))


class MasterKey(Base):
    __tablename__ = "master_keys"
    __table_args__ = (UniqueConstraint("domain_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id"))
    name: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(32))
    created: Mapped[str] = mapped_column(String(32))
    latest_version: Mapped[int] = mapped_column(Integer)
    min_decryption_version: Mapped[int] = mapped_column(Integer, default=1)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    deletion_allowed: Mapped[bool] = mapped_column(Boolean, default=False)


class MasterKeyVersion(Base):
    __tablename__ = "master_key_versions"
    __table_args__ = (UniqueConstraint("key_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("master_keys.id"))
    version: Mapped[int] = mapped_column(Integer)
    created: Mapped[str] = mapped_column(String(32))
    material: Mapped[bytes] = mapped_column(LargeBinary)  # barrier ciphertext, never plaintext


class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    accessor: Mapped[str] = mapped_column(String(32), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id"))
    display_name: Mapped[str] = mapped_column(String(128), default="")
    created: Mapped[str] = mapped_column(String(32))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class TokenUsage(Base):
    """Migration 0005 (tokens.py): a token's last use (to the minute) and when it was revoked.

    A table of its own rather than columns of ``tokens``, so code and data of the older schema
    (the tokens table as 0001 made it) keep working unchanged.
    """

    __tablename__ = "token_usage"
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id"), primary_key=True)
    last_used: Mapped[str | None] = mapped_column(String(32), nullable=True, default=None)
    revoked_at: Mapped[str | None] = mapped_column(String(32), nullable=True, default=None)


class AuditRecord(Base):
    __tablename__ = "audit"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    time: Mapped[str] = mapped_column(String(32))
    domain: Mapped[str] = mapped_column(String(128))
    op: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(Text)  # canonical JSON, exactly the bytes hashed
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


# Prebuilt statements of the hot paths (each release reads a key version and appends a record),
# run on the DBAPI connection (hot_sql.py).
_AUDIT_HEAD = HotStatement(
    select(AuditRecord.seq, AuditRecord.hash).order_by(AuditRecord.seq.desc()).limit(1)
)
_ADD_AUDIT = HotStatement(insert(AuditRecord), ("seq", "time", "domain", "op", "event", "prev_hash", "hash"))
_AUDIT_HEAD_KEY = "modelseal.audit_head"
_AUDIT_PENDING_KEY = "modelseal.audit_pending"
_MATERIAL = HotStatement(
    select(MasterKeyVersion.material).where(
        MasterKeyVersion.key_id == bindparam("key_id"), MasterKeyVersion.version == bindparam("version")
    )
)


def _insert_pending_audit(session: Session) -> None:
    pending = session.info.get(_AUDIT_PENDING_KEY)
    if pending:
        _ADD_AUDIT.run_many(session, pending)
        pending.clear()


# --- engine -------------------------------------------------------------------------------------


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


# --- tokens -------------------------------------------------------------------------------------


def new_token() -> str:
    return _TOKEN_PREFIX + base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


def token_hash(token: str) -> str:
    # Tokens carry 256 random bits: a plain hash can't be brute-forced, and unlike an HMAC under the
    # root it still authenticates callers while the barrier is sealed (they then get a clean 503).
    return hashlib.sha256(b"modelseal vault token v1\x00" + token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    accessor: str
    role: str
    domain: str
    domain_id: int


# --- audit --------------------------------------------------------------------------------------


def canonical(event: dict[str, Any]) -> str:
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def chain_hash(prev_hash: str, event_text: str) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + event_text.encode()).hexdigest()


@dataclass(frozen=True)
class AuditProblem:
    seq: int
    reason: str


def verify_chain(records: Iterator[tuple[int, str, str, str]]) -> tuple[int, AuditProblem | None]:
    """Check (seq, event, prev_hash, hash) rows in order; returns (rows checked, first problem)."""
    expected_prev, expected_seq, count = GENESIS_HASH, 1, 0
    for seq, event_text, prev_hash, own_hash in records:
        count += 1
        if seq != expected_seq:
            return count, AuditProblem(seq, f"sequence gap: expected record {expected_seq} (deleted?)")
        if prev_hash != expected_prev:
            return count, AuditProblem(
                seq, "prev_hash does not match the previous record (deleted or altered)"
            )
        if chain_hash(prev_hash, event_text) != own_hash:
            return count, AuditProblem(seq, "hash does not match its content (modified)")
        try:
            body = json.loads(event_text)
        except ValueError:
            return count, AuditProblem(seq, "event is not JSON")
        if not isinstance(body, dict) or body.get("seq") != seq or canonical(body) != event_text:
            return count, AuditProblem(seq, "event is not canonical or names another sequence number")
        expected_prev, expected_seq = own_hash, seq + 1
    return count, None


# --- the store ----------------------------------------------------------------------------------


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
    def __init__(self, engine: Engine, barrier: Barrier) -> None:
        self.engine = engine
        self.barrier = barrier
        self._writer = engine.execution_options(vault_write=True)
        # SQLite: writers queue on a file lock before BEGIN IMMEDIATE (writer_lock.py).
        self._writer_lock = writer_lock.for_engine(engine)

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        with (
            self._writer_lock(),
            Session(self._writer, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    @contextmanager
    def write_batch(self) -> Iterator[Session]:
        """``write_session`` for a group of key releases: its audit records are inserted together, when
        it commits (see audit_in). Takes no savepoints: a record pending from before one would be
        inserted inside it."""
        with self.write_session() as session:
            session.info[_AUDIT_PENDING_KEY] = []
            event.listen(session, "before_commit", _insert_pending_audit)
            yield session

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    # The audit record is added to the caller's session: it commits or rolls back with the effect.
    def audit_in(self, session: Session, domain: str, op: str, actor: str, **details: Any) -> None:
        # Prebuilt statements on the session's connection, after flushing the effect the record
        # follows (HotStatement flushes): through the ORM the head read + insert + flush cost
        # ~0.45 ms of CPU a record, a large share of a key release (group commit writes one per
        # release). In a write_batch transaction the records are inserted in one executemany as
        # it commits (before_commit: still in the transaction of their effects, and if the insert
        # fails everything rolls back), one round trip on PostgreSQL instead of one per release.
        # The head this transaction last wrote, if it wrote one: it holds the write lock, so no one
        # else appended since (a group commit appends one record per release).
        # Inside a savepoint nothing is remembered: a rollback to it would take the record back.
        transaction = session.get_transaction()
        nested = session.in_nested_transaction()
        known = session.info.pop(_AUDIT_HEAD_KEY, None)
        if known is not None and known[0] is transaction and not nested:
            seq, prev = known[1] + 1, known[2]
        else:
            _insert_pending_audit(session)  # the head must count this transaction's records
            head = _AUDIT_HEAD.first(session, {})
            seq = 1 if head is None else head[0] + 1
            prev = GENESIS_HASH if head is None else head[1]
        when = now()
        body = {"seq": seq, "time": when, "domain": domain, "op": op, "actor": actor, **details}
        text = canonical(body)
        own_hash = chain_hash(prev, text)
        row = {
            "seq": seq,
            "time": when,
            "domain": domain,
            "op": op,
            "event": text,
            "prev_hash": prev,
            "hash": own_hash,
        }
        pending = session.info.get(_AUDIT_PENDING_KEY)
        if pending is not None and not nested:
            pending.append(row)
        else:
            _ADD_AUDIT.run(session, row)
        if not nested:
            session.info[_AUDIT_HEAD_KEY] = (transaction, seq, own_hash)

    def secret_digest(self, purpose: str, secret: bytes) -> str:
        """How a secret appears in the audit: an HMAC under the root, never the secret."""
        return self.barrier.hmac(purpose, secret).hex()

    def operation(self, who: Principal, op: str, target: str, fn: Callable[[Session], T]) -> T:
        try:
            with self.write_session() as session:
                return fn(session)
        except KeyServiceError as e:
            if e.status in (400, 403, 404, 409):
                self.record_refusal(who, op, target, e)
            raise

    def record_refusal(self, who: Principal, op: str, target: str, error: KeyServiceError) -> None:
        try:
            with self.write_session() as session:
                self.audit_in(session, who.domain, op, who.accessor, target=target, outcome=error.code)
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
            self.audit_in(session, domain, "token.bootstrap", "init", token_accessor=accessor, role="admin")
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
            self.audit_in(
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
            self.audit_in(session, who.domain, "key.create", who.accessor, key=name, version=1)
            return self._info(session, key)

        return self.operation(who, "key.create", name, run)

    def list_keys(self, who: Principal) -> list[str]:
        def run(session: Session) -> list[str]:
            names = session.execute(
                select(MasterKey.name).where(MasterKey.domain_id == who.domain_id).order_by(MasterKey.name)
            ).scalars()
            self.audit_in(session, who.domain, "key.list", who.accessor)
            return list(names)

        return self.operation(who, "key.list", "", run)

    def read_key(self, who: Principal, name: str) -> KeyInfo:
        def run(session: Session) -> KeyInfo:
            info = self._info(session, self._key(session, who, name))
            self.audit_in(session, who.domain, "key.read", who.accessor, key=name)
            return info

        return self.operation(who, "key.read", name, run)

    def rotate_key(self, who: Principal, name: str) -> KeyInfo:
        def run(session: Session) -> KeyInfo:
            key = self._key(session, who, name)
            key.latest_version += 1
            self._add_version(session, key, key.latest_version)
            session.flush()
            self.audit_in(
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
            self.audit_in(
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
            self.audit_in(
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
            self.audit_in(
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
            self.audit_in(session, who.domain, op, who.accessor, **details)

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


def verify_audit(engine: Engine) -> int:
    """Check the whole audit chain in the database; returns the number of records."""
    with Session(engine) as session, session.begin():
        rows = session.execute(
            select(AuditRecord.seq, AuditRecord.event, AuditRecord.prev_hash, AuditRecord.hash).order_by(
                AuditRecord.seq
            )
        )
        count, problem = verify_chain((seq, text, prev, own) for seq, text, prev, own in rows)
    if problem is not None:
        raise AuditChainError(f"audit chain broken at record {problem.seq}: {problem.reason}")
    return count
