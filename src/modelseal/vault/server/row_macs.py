"""Rows that decide access are bound under the barrier: storage is untrusted.

Everything secret in the database is barrier ciphertext, but the fields that decide who gets a key
are plain columns: a thief with the database file and no root key could flip `devices.revoked` or
reset a licence's `uses`. So each such row carries ``mac`` = HMAC(barrier key, table, its decisive
fields), written with every change and checked on every read that decides. A changed row fails
closed (:class:`RowTampered`): a release is refused (the audit record says why), an admin call
answers 500 ``storage_tampered``.

Writes through the ORM are bound by a flush hook; the release path's prepared statements bind their
own (release.py). ORM loads are checked by a load hook; the release path checks the rows it builds.
The hooks act on sessions whose ``info`` holds the barrier (Store's sessions), so other tools can
still read the file. Domain names are not bound: every row that decides names its domain by id.
Deleting or replaying an older copy of a whole row is not a change a row MAC
can see; the audit anchor (audit_anchor.py) sees a database rolled back as a whole.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Table, event, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from ..errors import KeyServiceError
from .barrier import Barrier
from .schema import Base, Device, Licence, LicenceDevice, MasterKey, Policy, Token

BARRIER_KEY = "modelseal.barrier"
_log = logging.getLogger("modelseal.vault")

# The decisive fields of each table, in MAC order. ``id`` binds a row to the rows that name it;
# licence_devices is bound by its (unique) pair instead, so the release path can insert it without
# reading its id back.
FIELDS: dict[str, tuple[str, ...]] = {
    "devices": (
        "id", "domain_id", "name", "groups", "psk_generation", "psk", "revoked", "identity",
        "identity_generation",
    ),
    "tokens": ("id", "accessor", "token_hash", "role", "domain_id", "revoked"),
    "master_keys": (
        "id", "domain_id", "name", "type", "latest_version", "min_decryption_version", "disabled",
        "deletion_allowed",
    ),
    "policies": ("id", "domain_id", "name", "key_name", "devices", "groups"),
    "licences": (
        "id", "domain_id", "name", "policy_id", "not_after", "max_uses", "max_devices", "uses",
        "device_count",
    ),
    "licence_devices": ("licence_id", "device_id"),
}  # fmt: skip
BOUND: tuple[type[Base], ...] = (Device, Token, MasterKey, Policy, Licence, LicenceDevice)
_BOOLEANS = {"revoked", "disabled", "deletion_allowed"}


class RowTampered(KeyServiceError):
    """A row that decides access was changed outside the vault (its MAC does not verify)."""

    code = "storage_tampered"
    status = 500

    def __init__(self, table: str, row: object) -> None:
        self.where = f"{table}/{row}"
        super().__init__(
            f"stored {table} row {row} fails its integrity check (changed outside the vault): "
            "refused; restore the database from a backup or re-create the object",
            code=self.code,
            status=self.status,
        )


def _value(field: str, value: Any) -> Any:
    if value is None:
        return None
    if field in _BOOLEANS:
        return bool(value)  # SQLite's driver gives 0/1 where the ORM gives False/True
    if isinstance(value, bytes | bytearray | memoryview):
        return {"sha256": hashlib.sha256(bytes(value)).hexdigest()}
    if isinstance(value, float):
        return value.hex()  # exact, whatever JSON does with floats
    return value


def row_mac(barrier: Barrier, table: str, row: Mapping[str, Any]) -> bytes:
    values = [_value(f, row[f]) for f in FIELDS[table]]
    text = json.dumps([table, values], separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return barrier.hmac("row " + table, text.encode())


def check_row(barrier: Barrier, table: str, row: Mapping[str, Any]) -> Mapping[str, Any]:
    """``row`` (with its ``mac``) if it is as the vault wrote it, else RowTampered."""
    stored = row.get("mac")
    if stored is None or not hmac.compare_digest(row_mac(barrier, table, row), bytes(stored)):
        name = row.get("id", "-") if "id" in FIELDS[table] else f"{row['licence_id']}:{row['device_id']}"
        _log.error("refused a %s row changed outside the vault: %s", table, name)
        raise RowTampered(table, name)
    return row


def fields_of(obj: Base) -> dict[str, Any]:
    table = str(obj.__tablename__)
    return {f: getattr(obj, f) for f in (*FIELDS[table], "mac")}


def bind(barrier: Barrier, obj: Base) -> None:
    obj.mac = row_mac(barrier, str(obj.__tablename__), fields_of(obj))  # type: ignore[attr-defined]


def checked(barrier: Barrier, obj: Base) -> None:
    check_row(barrier, str(obj.__tablename__), fields_of(obj))


@event.listens_for(Session, "before_flush")
def _bind_changed(session: Session, _context: Any, _instances: Any) -> None:
    barrier = session.info.get(BARRIER_KEY)
    if barrier is None:
        return
    for obj in session.dirty:
        if isinstance(obj, BOUND) and session.is_modified(obj):
            bind(barrier, obj)
    for obj in session.new:
        if isinstance(obj, LicenceDevice):
            bind(barrier, obj)


@event.listens_for(Session, "after_flush")
def _bind_new(session: Session, _context: Any) -> None:
    # New rows get their id from the database in the flush: bound right after it, in its transaction.
    barrier = session.info.get(BARRIER_KEY)
    if barrier is None:
        return
    for obj in session.new:
        if isinstance(obj, BOUND) and not isinstance(obj, LicenceDevice):
            mac = row_mac(barrier, str(obj.__tablename__), fields_of(obj))
            table = _table(type(obj))
            row_id = obj.id  # type: ignore[attr-defined]
            session.connection().execute(update(table).where(table.c.id == row_id).values(mac=mac))
            set_committed_value(obj, "mac", mac)  # as the row now holds it: not dirty again


def _check_loaded(obj: Base, context: Any) -> None:
    session = getattr(context, "session", None)
    barrier = session.info.get(BARRIER_KEY) if session is not None else None
    if barrier is not None:
        checked(barrier, obj)


for _cls in BOUND:
    event.listen(_cls, "load", _check_loaded)


def _table(cls: type[Base]) -> Table:
    table = cls.__table__
    assert isinstance(table, Table)
    return table


def unbound(session: Session) -> list[tuple[str, object]]:
    """(table, row) of every bound table's row that has no MAC."""
    found: list[tuple[str, object]] = []
    for cls in BOUND:
        table = _table(cls)
        key = table.c.id if "id" in FIELDS[table.name] else table.c.licence_id
        rows = session.execute(select(key).where(table.c.mac.is_(None))).scalars()
        found += [(table.name, k) for k in rows]
    return found


def bind_unbound(session: Session, barrier: Barrier) -> int:
    """Bind every row that has no MAC, as it is (`vault audit anchor` on a vault made before MACs)."""
    count = 0
    for cls in BOUND:
        table = _table(cls)
        names = FIELDS[table.name]
        rows = session.execute(select(*(table.c[n] for n in names)).where(table.c.mac.is_(None))).mappings()
        for row in list(rows):
            where = [table.c[n] == row[n] for n in (("id",) if "id" in names else names)]
            mac = row_mac(barrier, table.name, dict(row))
            session.execute(update(table).where(*where).values(mac=mac))
            count += 1
    return count
