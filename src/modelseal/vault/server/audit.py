"""The audit chain: each record's canonical JSON and hash over the previous record's hash, appended
by :class:`AuditLog` in the transaction of the effect it records, and the check of a whole chain
(``vault audit verify``). The head each commit reaches is anchored outside the database
(audit_anchor.py), so cutting records off the end is seen too."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ..errors import AuditChainError
from .audit_anchor import AuditAnchor, Head
from .hot_sql import HotStatement
from .schema import AuditRecord, now

GENESIS_HASH = "0" * 64

# Prebuilt statements (hot_sql.py): every key release appends a record.
_HEAD = HotStatement(select(AuditRecord.seq, AuditRecord.hash).order_by(AuditRecord.seq.desc()).limit(1))
_ADD = HotStatement(insert(AuditRecord), ("seq", "time", "domain", "op", "event", "prev_hash", "hash"))
_HEAD_KEY = "modelseal.audit_head"
_PENDING_KEY = "modelseal.audit_pending"

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

def _insert_pending(session: Session) -> None:
    pending = session.info.get(_PENDING_KEY)
    if pending:
        _ADD.run_many(session, pending)
        pending.clear()


class AuditLog:
    """Appends records to the chain and anchors the head each write transaction commits."""

    def __init__(self, anchor: AuditAnchor | None = None) -> None:
        self.anchor = anchor

    def record(self, session: Session, domain: str, op: str, actor: str, **details: Any) -> None:
        """Append a record to ``session``'s transaction: it commits or rolls back with the effect."""
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
        known = session.info.pop(_HEAD_KEY, None)
        if known is not None and known[0] is transaction and not nested:
            seq, prev = known[1] + 1, known[2]
        else:
            _insert_pending(session)  # the head must count this transaction's records
            head = _HEAD.first(session, {})
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
        pending = session.info.get(_PENDING_KEY)
        if pending is not None and not nested:
            pending.append(row)
        else:
            _ADD.run(session, row)
        if not nested:
            session.info[_HEAD_KEY] = (transaction, seq, own_hash)


    def batch(self, session: Session) -> None:
        """Insert ``session``'s records together as it commits (a group of key releases). Takes no
        savepoints: a record pending from before one would be inserted inside it."""
        session.info[_PENDING_KEY] = []
        event.listen(session, "before_commit", _insert_pending)

    def committed(self, session: Session) -> None:
        """``session`` has committed: anchor the head it wrote, if it wrote one."""
        known = session.info.get(_HEAD_KEY)
        if known is not None and self.anchor is not None:
            self.anchor.advance(Head(known[1], known[2]))

    def head(self, session: Session) -> Head | None:
        """The last record in the database."""
        row = _HEAD.first(session, {})
        return None if row is None else Head(row[0], row[1])

    def check_anchor(self, engine: Engine) -> Head | None:
        """Fail unless the database still ends at or after the anchored head (see audit_anchor)."""
        return None if self.anchor is None else self.anchor.check(engine)
