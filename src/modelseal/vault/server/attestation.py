"""Attestation-based key release, in the spirit of Confidential Containers' key broker.

A device (the vault's `devices` entity) gets an Ed25519 identity public key enrolled, optionally
with the software measurement it must report. To get a file key it asks for a challenge (a fresh
32-byte nonce, single use, 60 s), has its card sign an attestation report over that nonce
(modelseal.device: the report binds the card's fresh X25519 session key), and sends the report
with the `vault` stanza it wants opened. The vault checks the report with the enrolled key, consumes
the nonce, and then applies the PSK release's own decision code (devices.py: lockout, policy,
licence counters, audit record, one transaction); the file key goes out HPKE-sealed to the
report's session key, so the host that relays it never holds it.

No token on the challenge and release routes: the device is not authenticated until its report
verifies. Refusals are the PSK release's one 403 body; the reason is in the audit only.
"""

# No `from __future__ import annotations`: FastAPI must evaluate the enrolment route's annotation,
# whose dependency is local to add_routes (app.py has none either).
import base64
import binascii
import hashlib
import hmac
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ...keyrelease import wire
from ...keyrelease.report import MAX_CLOCK_SKEW, Report
from ..errors import KeyServiceError
from .barrier import Barrier
from .callers import Principal
from .device_rows import Decision
from .devices import DeviceStore
from .release import LOCKOUT_WINDOW_SECONDS
from .schema import AttestNonce, Device
from .store import Store

ENV_MAX_REPORT_AGE = "MODELSEAL_VAULT_ATTEST_MAX_AGE"
NONCE_TTL_SECONDS = 60
# A report is made after its challenge, so with a sane card clock it is at most the nonce's TTL
# old; the rest is room for the card's clock running behind the vault's.
DEFAULT_MAX_REPORT_AGE = 120.0
MAX_REPORT_AGE_LIMIT = 3600.0
# Used and expired rows are kept this long so that a late replay is audited as a replay.
KEEP_SECONDS = LOCKOUT_WINDOW_SECONDS
MAX_CHALLENGE_BODY = 1024
# The report (<= 4 KiB, base64 5,464 characters) and the small fields.
MAX_ATTEST_BODY = 8192
MEASUREMENT_SIZE = 32
IDENTITY_KEY_SIZE = 32
# Verified against when the device is unknown or not enrolled, so that path does the same
# signature work as a known device (timing says little more than the uniform answer).
_DUMMY_IDENTITY = Ed25519PrivateKey.generate().public_key()


@dataclass(frozen=True)
class AttestedRelease:
    """A parsed `POST /v1/attest/release`: the report is structurally valid, nothing more yet."""

    domain: str
    device: str
    report: Report
    key_name: str
    key_version: int
    wrapped: bytes
    nonce: bytes  # the challenge the report was made over (its SHA-256 is the report's request digest)

    @property
    def ephemeral_public(self) -> bytes:
        return self.report.session_public_key

    def hpke_info(self) -> bytes:
        return wire.attest_hpke_info(
            domain=self.domain,
            device=self.device,
            key_name=self.key_name,
            key_version=self.key_version,
            nonce_digest=self.report.request_digest,
        )


def max_report_age_from_env() -> float:
    """The oldest report accepted, from MODELSEAL_VAULT_ATTEST_MAX_AGE (seconds) or the default."""
    text = os.environ.get(ENV_MAX_REPORT_AGE)
    if text is None or not text.strip():
        return DEFAULT_MAX_REPORT_AGE
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 1.0 <= value <= MAX_REPORT_AGE_LIMIT:
        raise KeyServiceError(
            f"{ENV_MAX_REPORT_AGE} must be a number of seconds within 1..{MAX_REPORT_AGE_LIMIT:.0f}",
            code="invalid_config",
        )
    return value


def parse_identity(public_key: str, measurement: str | None) -> tuple[bytes, bytes | None]:
    """An enrolment body's key (base64 of 32 raw bytes) and measurement (64 hex digits or null)."""
    try:
        raw = base64.b64decode(public_key, validate=True)
        Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise KeyServiceError(
            "public_key is not base64 of a 32-byte Ed25519 public key", code="invalid_request"
        ) from None
    if measurement is None:
        return raw, None
    try:
        expected = bytes.fromhex(measurement)
    except ValueError:
        expected = b""
    if len(expected) != MEASUREMENT_SIZE:
        raise KeyServiceError(
            f"measurement is {2 * MEASUREMENT_SIZE} hex digits (or null)", code="invalid_request"
        )
    return raw, expected


_NONCE = struct.Struct(">Q8s16s")  # issued (unix seconds), random, tag
_NONCE_PURPOSE = "attest challenge"


def _nonce_tag(barrier: Barrier, domain: str, device: str, issued: int, salt: bytes) -> bytes:
    names = domain.encode() + b"\0" + device.encode() + b"\0"
    return barrier.hmac(_NONCE_PURPOSE, names + struct.pack(">Q", issued) + salt)[:16]


def make_nonce(barrier: Barrier, domain: str, device: str, issued: int) -> bytes:
    """A challenge for (domain, device) issued at ``issued``: its time, 8 random bytes and a MAC
    under the barrier over all of it and the names (32 bytes, wire.ATTEST_NONCE_SIZE)."""
    salt = os.urandom(8)
    return _NONCE.pack(issued, salt, _nonce_tag(barrier, domain, device, issued, salt))


def check_nonce(barrier: Barrier, domain: str, device: str, nonce: bytes) -> int | None:
    """When ``nonce`` was issued to (domain, device), or None if the vault never issued it."""
    if len(nonce) != _NONCE.size:
        return None
    issued, salt, tag = _NONCE.unpack(nonce)
    return issued if hmac.compare_digest(tag, _nonce_tag(barrier, domain, device, issued, salt)) else None


class Attestation:
    """Enrolment, challenges and the attested release, on a DeviceStore (same store and audit)."""

    def __init__(self, devices: DeviceStore, *, max_report_age: float = DEFAULT_MAX_REPORT_AGE) -> None:
        self.devices = devices
        self.store: Store = devices.store
        self.max_report_age = max_report_age

    # --- enrolment (admin/operator) ---------------------------------------------------------------

    def enroll(
        self, who: Principal, name: str, public_key: bytes, measurement: bytes | None
    ) -> dict[str, Any]:
        def run(session: Session) -> dict[str, Any]:
            device = self.devices._device(session, who, name)
            if device.revoked:
                raise KeyServiceError(f"device {name!r} is revoked", code="revoked", status=409)
            self.devices.set_identity(device, public_key, measurement)
            # Challenges issued under the old key are void: the new key could not sign for them.
            session.execute(delete(AttestNonce).where(AttestNonce.device_id == device.id))
            session.flush()
            self.store.audit.record(
                session,
                who.domain,
                "device.enroll",
                who.accessor,
                device=name,
                identity_generation=device.identity_generation,
                public_key=base64.b64encode(public_key).decode(),
                measurement=measurement.hex() if measurement is not None else None,
            )
            return self.devices._meta(session, device)

        return self.store.operation(who, "device.enroll", name, run)

    # --- challenge (no token) ---------------------------------------------------------------------

    def challenge(self, domain: str, name: str) -> bytes:
        """A fresh nonce for anyone who asks, bound to the claimed device: nothing is stored.

        Stateless, so no flood of challenges can evict a real device's (the vault used to keep the
        32 newest per device, unauthenticated); a nonce is checked and recorded only when a report
        over it comes back (``_consume_nonce``). Unknown, revoked or locked devices get one too,
        refused at release like any of their requests, so the answer says nothing about names.
        """
        return make_nonce(self.store.barrier, domain, name, int(time.time()))

    # --- release (no token) -----------------------------------------------------------------------

    def release(self, req: AttestedRelease) -> bytes:
        """The file key HPKE-sealed to the report's session key, or ReleaseDenied (reason audited)."""
        return self.devices.releases.commit_release(*self.release_steps(req))

    def release_steps(
        self, req: AttestedRelease
    ) -> tuple[Callable[[Session, float], Decision], Callable[[], None]]:
        """(decide, on_conflict) of one attested release: alone or in a group (group_commit.py)."""
        return lambda session, at: self._decide(session, req, at), lambda: self._record_conflict(req)

    def _record_conflict(self, req: AttestedRelease) -> None:
        # Only a known device's decision gets as far as a unique index: its names are real.
        self.devices.releases.record_refusal_apart(
            req.domain,
            req.device,
            req,
            outcome="conflict",
            proof="attestation",
            nonce_hmac=self._nonce_hmac(req),
        )

    def _nonce_hmac(self, req: AttestedRelease) -> str:
        return self.store.secret_digest("attest nonce digest", req.report.request_digest)

    def _identity(self, device: Device | None) -> tuple[Ed25519PublicKey, bytes | None] | None:
        if device is None or device.identity is None:
            return None
        public, measurement = self.devices.releases.identity_of(device) or (b"", None)
        return Ed25519PublicKey.from_public_bytes(public), measurement

    def _decide(self, session: Session, req: AttestedRelease, at: float) -> Decision:
        decision = Decision()
        report = req.report
        domain_id, device = self.devices.releases.find_device_for(session, req.domain, req.device, decision)
        identity = self._identity(device)
        if identity is None:
            # The barrier work a known device's identity costs, so timing says little more.
            dummy = self.devices.releases.dummy_blob()
            self.store.barrier.decrypt(dummy, table="devices", row="-", purpose="psk")
        try:
            (identity[0] if identity else _DUMMY_IDENTITY).verify(report.signature, report.signed_bytes())
            signed = identity is not None
        except InvalidSignature:
            signed = False
        if device is None:
            decision.reason = decision.reason or "unknown_device"
        elif device.revoked:
            decision.reason = "revoked"
        elif identity is None:
            decision.reason = "not_enrolled"
        elif not signed:
            decision.reason = "bad_signature"
        subject = self.devices.releases.failure_subject(domain_id, req.domain, req.device)
        if decision.reason is not None:  # every failed proof counts, so all write the same rows
            self.devices.releases.count_failure(session, subject, at)
        self.devices.releases.check_lockout(session, subject, at, decision)
        if decision.reason is None and device is not None:
            decision.reason = self._consume_nonce(session, device, req, at)
        if decision.reason is None and identity is not None:
            expected = identity[1]
            if expected is not None and not hmac.compare_digest(report.measurement, expected):
                decision.reason = "wrong_measurement"
        if decision.reason is None:
            age = at - report.timestamp
            if age > self.max_report_age:
                decision.reason = "stale_report"
            elif age < -MAX_CLOCK_SKEW:
                decision.reason = "future_report"
        if decision.reason is None and device is not None:
            self.devices.releases.authorize_and_seal(session, device, req, at, decision)

        proof: dict[str, Any] = {"proof": "attestation", "nonce_hmac": self._nonce_hmac(req)}
        if signed and device is not None:
            # Only a verified report's fields are the card's word; an unverified one's are noise.
            proof |= {
                "identity_generation": device.identity_generation,
                "card_id": report.device_id,
                "session_counter": report.session_counter,
                "measurement": report.measurement.hex(),
            }
        self.devices.releases.audit_release(
            session,
            domain=req.domain,
            domain_known=domain_id is not None,
            claimed_device=req.device,
            device=device,
            target=req,
            decision=decision,
            **proof,
        )
        return decision

    def _consume_nonce(self, session: Session, device: Device, req: AttestedRelease, at: float) -> str | None:
        issued = check_nonce(self.store.barrier, req.domain, req.device, req.nonce)
        covered = hmac.compare_digest(hashlib.sha256(req.nonce).digest(), req.report.request_digest)
        if issued is None or not covered:
            return "unknown_nonce"  # never issued, for another device, or not what the report covers
        if at > issued + NONCE_TTL_SECONDS or issued > at + MAX_CLOCK_SKEW:
            return "nonce_expired"
        digest = hashlib.sha256(req.nonce).hexdigest()
        used = session.execute(select(AttestNonce.id).where(AttestNonce.nonce_hash == digest)).first()
        if used is not None:
            return "replay"
        # Used nonces are kept until they expired long enough ago that a late replay is still
        # audited as one; the unique index on the hash is the backstop between replicas.
        session.execute(delete(AttestNonce).where(AttestNonce.expires < at - KEEP_SECONDS))
        session.add(
            AttestNonce(
                device_id=device.id,
                nonce_hash=digest,
                created=float(issued),
                expires=float(issued + NONCE_TTL_SECONDS),
                used=at,
            )
        )
        session.flush()
        return None
