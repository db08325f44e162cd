"""The audit chain's head, kept outside the database it protects.

The hash chain proves that no record inside it changed, but not that none were cut off the end:
a database truncated after record 90 of 100, or rolled back to last week's copy, is a valid chain.
So after every write transaction commits, the vault writes the head it just committed (sequence
number and hash) to ``DATA/audit.anchor``, MAC'd with a key derived from the barrier root. At
start (or unseal) and in ``vault audit verify`` the database must still hold that record with that
hash; if it ends before it, or holds another record there, the vault refuses to serve.

The file is written after the commit, so it may lag the database (a crash in between) but never
lead it. Two slots, 512 bytes apart (different sectors), are written in turn without fsync: a torn
write spoils at most the slot being written, and the other still holds the previous head. Writers
(threads, `--workers` processes) take an flock on the file and overwrite the older slot, so the
anchor only moves forward.

What it cannot see: the database and this file rolled back together (both on one disk, copied
from one backup). A hardware monotonic counter (a TPM NV index) is the answer to that.
"""

from __future__ import annotations

import fcntl
import hmac
import logging
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ..errors import AuditChainError, KeyServiceError
from .barrier import Barrier
from .schema import AuditRecord

ANCHOR_FILE = "audit.anchor"
_log = logging.getLogger("modelseal.vault")
_MAGIC = b"MSAA\x01\x00\x00\x00"
_BODY = struct.Struct(">8sQ32s")  # magic, seq, hash
_SLOT = _BODY.size + 32  # + HMAC-SHA256
_SLOT_OFFSETS = (0, 512)
_PURPOSE = "audit anchor"


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str  # hex, as in the audit table


class AuditAnchor:
    """The anchor file of one data folder, under one barrier."""

    def __init__(self, path: Path, barrier: Barrier) -> None:
        self.path = path
        self._barrier = barrier
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._failed = False

    # --- reading --------------------------------------------------------------------------------

    def read(self) -> Head | None:
        """The newest valid head, or None when there is no anchor file."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise KeyServiceError(f"cannot read the audit anchor {self.path}: {e.strerror}") from None
        try:
            heads = [self._parse(os.pread(fd, _SLOT, offset)) for offset in _SLOT_OFFSETS]
        finally:
            os.close(fd)
        valid = [h for h in heads if h is not None]
        if not valid:
            raise AuditChainError(
                f"the audit anchor {self.path} fails its check (edited, truncated, or another vault's)"
            )
        return max(valid, key=lambda h: h.seq)

    def _parse(self, slot: bytes) -> Head | None:
        if len(slot) != _SLOT:
            return None
        body, mac = slot[: _BODY.size], slot[_BODY.size :]
        if not hmac.compare_digest(self._barrier.hmac(_PURPOSE, body), mac):
            return None
        magic, seq, digest = _BODY.unpack(body)
        return Head(seq, digest.hex()) if magic == _MAGIC and seq > 0 else None

    def check(self, engine: Engine) -> Head | None:
        """Fail unless the database still holds the anchored record; the anchored head, if any."""
        anchored = self.read()
        with Session(engine) as session, session.begin():
            last = session.execute(select(func.max(AuditRecord.seq))).scalar()
            at = (
                None
                if anchored is None
                else session.execute(select(AuditRecord.hash).where(AuditRecord.seq == anchored.seq)).scalar()
            )
        if anchored is None:
            if last is None:
                return None  # a new vault: its first commit writes the anchor
            raise AuditChainError(
                f"this vault has no audit anchor ({self.path.name}: made by an older modelseal, or "
                "deleted): check the chain with `modelseal vault audit verify`, then run "
                "`modelseal vault audit anchor` once"
            )
        if at is None:
            raise AuditChainError(
                f"the audit chain ends at record {last or 0} but this vault committed record "
                f"{anchored.seq}: records were cut off or the database was rolled back to an older copy"
            )
        if not hmac.compare_digest(at, anchored.hash):
            raise AuditChainError(
                f"audit record {anchored.seq} is not the one this vault committed: "
                "the database was replaced or rewritten"
            )
        return anchored

    # --- writing --------------------------------------------------------------------------------

    def advance(self, head: Head) -> None:
        """Record ``head`` (just committed) unless a newer one is anchored already."""
        with self._lock:
            try:
                self._advance(head)
                self._failed = False
            except OSError as e:
                # The commit stands (the caller must hear it succeeded): the anchor lags until a
                # later write succeeds, which weakens the check but never fails it. Said once.
                if not self._failed:
                    self._failed = True
                    _log.error("cannot update the audit anchor %s: %s", self.path, e.strerror)

    def _advance(self, head: Head) -> None:
        created = False
        if self._fd is None:
            flags = os.O_RDWR | os.O_CLOEXEC
            try:
                self._fd = os.open(self.path, flags)
            except FileNotFoundError:
                self._fd = os.open(self.path, flags | os.O_CREAT, 0o600)
                created = True
        fd = self._fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            slots = [self._parse(os.pread(fd, _SLOT, offset)) for offset in _SLOT_OFFSETS]
            seqs = [s.seq if s is not None else 0 for s in slots]
            if max(seqs) >= head.seq:
                return
            body = _BODY.pack(_MAGIC, head.seq, bytes.fromhex(head.hash))
            slot = body + self._barrier.hmac(_PURPOSE, body)
            offset = _SLOT_OFFSETS[seqs.index(min(seqs))]
            if os.pwrite(fd, slot, offset) != len(slot):
                raise OSError(28, "short write")
            if created:
                os.fsync(fd)
                dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def reset(self, head: Head) -> None:
        """Anchor ``head`` whatever was anchored before (`vault audit anchor`, after a restore)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                body = _BODY.pack(_MAGIC, head.seq, bytes.fromhex(head.hash))
                os.pwrite(fd, body + self._barrier.hmac(_PURPOSE, body), _SLOT_OFFSETS[0])
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
