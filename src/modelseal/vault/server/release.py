"""The key release decision, one per request (PSK proof) or attestation report: lockout, replay
index, policy, licence counters and the audit record commit in one transaction, and the sealed file
key leaves the process only after that commit. A refusal is committed the same way (its audit
record, the failure counting towards lockout, the consumed nonce), so what the caller is told and
what the audit says can't diverge. If the audit insert fails, the transaction rolls back and
nothing is released. Two proofs lead here: the PSK MAC, and an attestation report (attestation.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ...keyrelease import datakeys, wire
from ...keyrelease.wire import DEFAULT_DOMAIN
from ..errors import KeyServiceError
from . import release_sql as sql
from . import row_macs
from .device_rows import Decision, ReleaseDenied, identity_of, psk_row
from .row_macs import BARRIER_KEY, RowTampered, check_row
from .schema import Device, Licence, MasterKey, Policy
from .store import Store

LOCKOUT_FAILURES = 5

LOCKOUT_WINDOW_SECONDS = 15 * 60

NONCE_PURGE_SECONDS = 10.0

FAILURE_SWEEP_SECONDS = 60.0

# Compared against when the device is unknown, so that path does the same HMAC work.
_DUMMY_PSK = os.urandom(wire.PSK_SIZE)


@dataclass
class _Reads:
    """Rows one write transaction has read for releases, reused by its next releases (a group
    commit decides many in one transaction). Sound because the transaction holds the write lock:
    nothing else changes these rows before it ends, and the releases' own writes (licence uses,
    licence devices) are applied here as they are written. Kept in ``session.info``: a Session
    serves one transaction (Store.write_session), so this, key material included, goes with it.

    ``uses`` are the licence uses counted so far and not yet written: one UPDATE per licence when
    the transaction commits (before_commit, so in the transaction of the releases and their audit
    records), instead of one per release."""

    domains: dict[str, int | None] = field(default_factory=dict)
    devices: dict[tuple[int, str], Device | None] = field(default_factory=dict)
    policies: dict[tuple[int, str], list[Policy]] = field(default_factory=dict)
    licences: dict[int, list[Licence]] = field(default_factory=dict)
    knows: dict[tuple[int, int], bool] = field(default_factory=dict)
    keys: dict[tuple[int, str], MasterKey | None] = field(default_factory=dict)
    material: dict[tuple[int, int], bytes] = field(default_factory=dict)
    uses: dict[int, int] = field(default_factory=dict)

def _reads(session: Session) -> _Reads:
    reads = session.info.get("modelseal.release_reads")
    if not isinstance(reads, _Reads):
        reads = session.info["modelseal.release_reads"] = _Reads()
    return reads

def _count_use(session: Session, licence_id: int) -> None:
    uses = _reads(session).uses
    if not uses:
        event.listen(session, "before_commit", _write_uses)
    uses[licence_id] = uses.get(licence_id, 0) + 1

def _write_uses(session: Session) -> None:
    reads = _reads(session)
    barrier = session.info[BARRIER_KEY]
    # The Licence snapshots hold the counts as this transaction (the one writer) made them.
    snapshots = {lic.id: lic for found in reads.licences.values() for lic in found}
    for licence_id in reads.uses:
        lic = snapshots[licence_id]
        mac = row_macs.row_mac(barrier, "licences", row_macs.fields_of(lic))
        params = {"licence_id": licence_id, "uses": lic.uses, "device_count": lic.device_count, "mac": mac}
        sql.USE_LICENCE.run(session, params)
    reads.uses.clear()

@dataclass(frozen=True)
class ReleaseRequest:
    domain: str
    device: str
    key_name: str
    key_version: int
    wrapped: bytes
    timestamp: int
    nonce: bytes
    ephemeral_public: bytes
    mac: bytes = field(repr=False)

    def mac_input(self) -> bytes:
        return wire.mac_input(
            domain=self.domain,
            device=self.device,
            key_name=self.key_name,
            key_version=self.key_version,
            wrapped=self.wrapped,
            timestamp=self.timestamp,
            nonce=self.nonce,
            ephemeral_public=self.ephemeral_public,
        )

    def hpke_info(self) -> bytes:
        return wire.hpke_info(
            domain=self.domain,
            device=self.device,
            key_name=self.key_name,
            key_version=self.key_version,
            nonce=self.nonce,
        )

class ReleaseTarget(Protocol):
    """What a release seals, whichever proof the device gave (PSK request or attestation)."""

    @property
    def key_name(self) -> str: ...

    @property
    def key_version(self) -> int: ...

    @property
    def wrapped(self) -> bytes: ...

    @property
    def ephemeral_public(self) -> bytes:
        """The X25519 key the file key is HPKE-sealed to."""
        ...

    def hpke_info(self) -> bytes: ...

class ReleaseDecider:
    """Decides and commits key releases on top of a Store (same engine, barrier, audit)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._dummy: bytes | None = None
        self._nonces_purged: dict[int, float] = {}  # device id -> time.monotonic() of its last purge
        self._failures_swept = time.monotonic()  # of the last sweep (none is due at start)

    def dummy_blob(self) -> bytes:
        if self._dummy is None:
            self._dummy = self.store.barrier.encrypt(_DUMMY_PSK, table="devices", row="-", purpose="psk")
        return self._dummy

    def failure_subject(self, domain_id: int | None, domain: str, name: str) -> str:
        """Who a lockout counts against: the claimed names, whether or not they exist.

        A known device's subject is the same whichever path computes it (domain id + name); an
        unknown domain is named by its text instead.
        """
        where = str(domain_id) if domain_id is not None else f"?{domain}"
        return self.store.secret_digest("lockout subject", f"{where}\0{name}".encode())

    def recent_failures(self, session: Session, subject: str, at: float) -> int:
        since = at - LOCKOUT_WINDOW_SECONDS
        count = sql.FAILURES.scalar(session, {"subject": subject, "since": since})
        return int(count or 0)

    def device_failures(self, session: Session, device: Device, at: float) -> int:
        return self.recent_failures(session, self.failure_subject(device.domain_id, "", device.name), at)

    def release(self, req: ReleaseRequest) -> bytes:
        """The file key HPKE-sealed to ``req.ephemeral_public``, or ReleaseDenied (reason audited)."""
        return self.commit_release(*self.release_steps(req))

    def release_steps(
        self, req: ReleaseRequest
    ) -> tuple[Callable[[Session, float], Decision], Callable[[], None]]:
        """(decide, on_conflict) of one release: for commit_release, or a group (group_commit.py)."""
        return lambda session, at: self._decide(session, req, at), lambda: self._record_replay(req)

    def commit_release(
        self, decide: Callable[[Session, float], Decision], on_conflict: Callable[[], None]
    ) -> bytes:
        """Run one release decision in one write transaction; the sealed key only after commit."""
        at = time.time()
        try:
            with self.store.write_session() as session:
                decision = decide(session, at)
        except IntegrityError:
            # Only a unique index can refuse here: a concurrent twin of this request (another
            # worker or replica) committed first. Serialised writers make that a backstop, not a
            # path. ``on_conflict`` records it in its own transaction.
            on_conflict()
            raise ReleaseDenied() from None
        if decision.sealed is None:
            raise ReleaseDenied()
        return decision.sealed

    def _record_replay(self, req: ReleaseRequest) -> None:
        nonce_hmac = self.store.secret_digest("release nonce", req.nonce)
        self.record_refusal_apart(req.domain, req.device, req, outcome="replay", nonce_hmac=nonce_hmac)

    def record_refusal_apart(
        self, domain: str, device: str, target: ReleaseTarget, **details: Any
    ) -> None:
        """The audit record of a release refused after its transaction rolled back (a unique index
        saw a replay or a concurrent twin), in a transaction of its own. Best effort: the refusal
        stands whether or not it could be recorded."""
        try:
            with self.store.write_session() as session:
                self.store.audit.record(
                    session,
                    domain,
                    "key.release",
                    f"device:{device}",
                    device=device,
                    key=target.key_name,
                    version=target.key_version,
                    **details,
                )
        except Exception:  # noqa: S110 - see the docstring
            pass

    def find_device(self, session: Session, domain: str, name: str) -> tuple[int | None, Device | None]:
        """(domain id, device) of a release request's claimed names; either may be None.

        The device is a read-only snapshot of its row, not attached to the session: the release
        paths only read it (changing a device is for the admin routes, through ``_device``).
        """
        reads = _reads(session)
        if domain not in reads.domains:
            reads.domains[domain] = sql.DOMAIN_ID.scalar(session, {"name": domain})
        domain_id = reads.domains[domain]
        if domain_id is None:
            return None, None
        if (domain_id, name) not in reads.devices:
            row = sql.DEVICE.mapping(session, {"domain_id": domain_id, "name": name})
            if row is not None:
                check_row(self.store.barrier, "devices", row)
            reads.devices[domain_id, name] = Device(**row) if row is not None else None
        return domain_id, reads.devices[domain_id, name]

    def find_device_for(
        self, session: Session, domain: str, name: str, decision: Decision
    ) -> tuple[int | None, Device | None]:
        """``find_device`` for a decision: a tampered row refuses it (reason ``tampered_row``)."""
        try:
            return self.find_device(session, domain, name)
        except RowTampered as e:
            decision.reason, decision.details["tampered"] = "tampered_row", e.where
            return None, None

    def count_failure(self, session: Session, subject: str, at: float) -> None:
        """A failed proof (wrong MAC, bad report signature, unknown name): towards a lockout."""
        before = at - LOCKOUT_WINDOW_SECONDS
        sql.ADD_FAILURE.run(session, {"subject": subject, "at": at})
        sql.PURGE_FAILURES.run(session, {"subject": subject, "before": before})
        clock = time.monotonic()
        if clock - self._failures_swept >= FAILURE_SWEEP_SECONDS:
            self._failures_swept = clock
            sql.SWEEP_FAILURES.run(session, {"before": before})

    def check_lockout(self, session: Session, subject: str, at: float, decision: Decision) -> None:
        failures = self.recent_failures(session, subject, at)
        decision.details["recent_failures"] = failures
        if decision.reason is None and failures >= LOCKOUT_FAILURES:
            decision.reason = "locked"

    def audit_release(
        self,
        session: Session,
        *,
        domain: str,
        domain_known: bool,
        claimed_device: str,
        device: Device | None,
        target: ReleaseTarget,
        decision: Decision,
        **proof: Any,
    ) -> None:
        """The one `key.release` record of a decision, granted or refused, in its transaction."""
        if device is None:
            # The claimed name is attacker-chosen (or a mistyped secret): keep only its HMAC.
            who: dict[str, Any] = {
                "device_hmac": self.store.secret_digest("device name", claimed_device.encode())
            }
        else:
            who = {"device": device.name, "psk_generation": device.psk_generation}
        self.store.audit.record(
            session,
            domain if domain_known else DEFAULT_DOMAIN,
            "key.release",
            f"device:{device.name}" if device is not None else "device:unknown",
            **who,
            key=target.key_name,
            version=target.key_version,
            outcome=decision.reason or "released",
            **proof,
            **decision.details,
        )

    def _decide(self, session: Session, req: ReleaseRequest, at: float) -> Decision:
        decision = Decision()
        domain_id, device = self.find_device_for(session, req.domain, req.device, decision)
        if device is None:
            # Same barrier, HMAC and failure work as a known device, so response time says as
            # little as the response body about whether the id exists.
            psk = self.store.barrier.decrypt(self.dummy_blob(), table="devices", row="-", purpose="psk")
        else:
            psk = self.store.barrier.decrypt(
                device.psk, table="devices", row=psk_row(device), purpose="psk"
            )
        mac_ok = hmac.compare_digest(wire.mac(psk, req.mac_input()), req.mac)

        if device is None:
            decision.reason = decision.reason or "unknown_device"
        elif device.revoked:
            decision.reason = "revoked"
        elif not mac_ok:
            decision.reason = "bad_mac"
        subject = self.failure_subject(domain_id, req.domain, req.device)
        if decision.reason is not None:  # every failed proof counts, so all write the same rows
            self.count_failure(session, subject, at)
        self.check_lockout(session, subject, at, decision)
        if decision.reason is None and abs(at - req.timestamp) > wire.MAX_SKEW_SECONDS:
            decision.reason = "stale_timestamp"
        if decision.reason is None and device is not None:
            decision.reason = self._consume_nonce(session, device.id, req)
        if decision.reason is None and device is not None:
            self.authorize_and_seal(session, device, req, at, decision)

        self.audit_release(
            session,
            domain=req.domain,
            domain_known=domain_id is not None,
            claimed_device=req.device,
            device=device,
            target=req,
            decision=decision,
            nonce_hmac=self.store.secret_digest("release nonce", req.nonce),
        )
        return decision

    def _consume_nonce(self, session: Session, device_id: int, req: ReleaseRequest) -> str | None:
        digest = hashlib.sha256(req.nonce).hexdigest()
        # In a group commit an earlier release of the same group inserted its nonce in this very
        # transaction: a replay inside one group is found here like any other.
        params = {"device_id": device_id, "nonce_hash": digest, "timestamp": req.timestamp}
        if sql.ADD_NONCE.run(session, params).rowcount != 1:
            return "replay"
        # Rows whose timestamp is out of the skew window can never match a fresh request again
        # (its own is inside it), so they only take room: deleted every NONCE_PURGE_SECONDS per
        # device instead of at every release, which saves a statement (on PostgreSQL a round trip)
        # and leaves at most that much more in the index. A purge lost to a rollback waits for
        # the next.
        clock = time.monotonic()
        if clock - self._nonces_purged.get(device_id, -NONCE_PURGE_SECONDS) >= NONCE_PURGE_SECONDS:
            self._nonces_purged[device_id] = clock
            before = int(time.time()) - wire.MAX_SKEW_SECONDS - 1
            sql.PURGE_NONCES.run(session, {"device_id": device_id, "before": before})
        return None

    def authorize_and_seal(
        self, session: Session, device: Device, req: ReleaseTarget, at: float, decision: Decision
    ) -> None:
        """Policy, licences and key for ``device``; seals the file key into ``decision`` if allowed.
        A tampered row among them refuses the release (reason ``tampered_row``), nothing counted."""
        try:
            self._authorize_and_seal(session, device, req, at, decision)
        except RowTampered as e:
            decision.reason, decision.details["tampered"], decision.sealed = "tampered_row", e.where, None

    def _authorize_and_seal(
        self, session: Session, device: Device, req: ReleaseTarget, at: float, decision: Decision
    ) -> None:
        barrier = self.store.barrier
        reads = _reads(session)
        groups = set(json.loads(device.groups))
        where = (device.domain_id, req.key_name)
        if where not in reads.policies:
            rows = sql.POLICIES.mappings(session, {"domain_id": device.domain_id, "key_name": req.key_name})
            reads.policies[where] = [Policy(**check_row(barrier, "policies", row)) for row in rows]
        policies = [
            p
            for p in reads.policies[where]
            if device.name in json.loads(p.devices) or groups & set(json.loads(p.groups))
        ]
        if not policies:
            decision.reason = "no_policy"
            return
        chosen: tuple[Policy, list[tuple[Licence, bool]]] | None = None
        for policy in policies:
            # Writers are already serialised (BEGIN IMMEDIATE / the PostgreSQL advisory lock, see
            # store.py), so two releases can't both take the last use; FOR UPDATE keeps that true
            # for any writer that might one day skip the lock.
            if policy.id not in reads.licences:
                rows = sql.LICENCES.mappings(session, {"policy_id": policy.id})
                reads.licences[policy.id] = [Licence(**check_row(barrier, "licences", row)) for row in rows]
            found = reads.licences[policy.id]
            checked = [(lic, self._licence_refusal(session, lic, device.id, at)) for lic in found]
            refusal = next((r for _, r in checked if r is not None), None)
            if refusal is None:
                chosen = (policy, [(lic, self._known(session, lic.id, device.id)) for lic in found])
                break
            decision.reason = decision.reason or refusal
        if chosen is None:
            return
        decision.reason = None
        policy, licences = chosen
        decision.details["policy"] = policy.name
        decision.details["licences"] = [lic.name for lic, _ in licences]

        if where not in reads.keys:
            row = sql.MASTER_KEY.mapping(session, {"domain_id": device.domain_id, "name": req.key_name})
            key_row = check_row(barrier, "master_keys", row) if row is not None else None
            reads.keys[where] = MasterKey(**key_row) if key_row is not None else None
        key = reads.keys[where]
        if key is None:
            decision.reason = "unknown_key"
            return
        if key.disabled:
            decision.reason = "key_disabled"
            return
        if not key.min_decryption_version <= req.key_version <= key.latest_version:
            decision.reason = "version_retired"
            return
        try:
            master = reads.material.get((key.id, req.key_version))
            if master is None:
                master = reads.material[key.id, req.key_version] = self.store._material(
                    session, key, req.key_version
                )
            mek = datakeys.unwrap(master, req.key_name, req.key_version, req.wrapped)
        except KeyServiceError:
            decision.reason = "invalid_wrapped_key"
            return
        try:
            public = X25519PublicKey.from_public_bytes(req.ephemeral_public)
            decision.sealed = wire.SUITE.encrypt(mek, public, info=req.hpke_info())
        except Exception:  # a low-order or otherwise unusable public key
            decision.reason = "bad_public_key"
            return
        for lic, known in licences:
            _count_use(session, lic.id)
            lic.uses += 1
            if not known:
                pair = {"licence_id": lic.id, "device_id": device.id}
                mac = row_macs.row_mac(barrier, "licence_devices", pair)
                sql.ADD_LICENCE_DEVICE.run(session, pair | {"mac": mac})
                reads.knows[lic.id, device.id] = True
                lic.device_count += 1  # written with the uses, under the row's MAC (_write_uses)
        decision.details["data_key_hmac"] = self.store.secret_digest("data key", mek)

    def knows(self, session: Session, licence_id: int, device_id: int) -> bool:
        found = sql.KNOWS.mapping(session, {"licence_id": licence_id, "device_id": device_id})
        if found is not None:
            check_row(self.store.barrier, "licence_devices", found)
        return found is not None

    def _known(self, session: Session, licence_id: int, device_id: int) -> bool:
        """``_knows``, remembered for the rest of the transaction (see _Reads)."""
        knows = _reads(session).knows
        if (licence_id, device_id) not in knows:
            knows[licence_id, device_id] = self.knows(session, licence_id, device_id)
        return knows[licence_id, device_id]

    def _licence_refusal(self, session: Session, lic: Licence, device_id: int, at: float) -> str | None:
        if lic.not_after is not None and at > lic.not_after:
            return "licence_expired"
        if lic.max_uses is not None and lic.uses >= lic.max_uses:
            return "licence_used_up"
        # The MAC'd count, not the slot rows: deleting one frees no slot.
        full = lic.max_devices is not None and lic.device_count >= lic.max_devices
        if full and not self._known(session, lic.id, device_id):
            return "licence_device_limit"
        return None

    def identity_of(self, device: Device) -> tuple[bytes, bytes | None] | None:
        """The device's enrolled card identity (attestation.py checks reports against it)."""
        return identity_of(self.store.barrier, device)
