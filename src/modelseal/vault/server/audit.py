"""The audit chain: each record's canonical JSON and hash over the previous record's hash, and the
check of a whole chain (``vault audit verify``). Records are appended by Store.audit_in, in the
transaction of the effect they record."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ..errors import AuditChainError
from .schema import AuditRecord

GENESIS_HASH = "0" * 64

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
