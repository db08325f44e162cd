"""Attestation reports: their canonical signed encoding, and the owner-side verification.

A report binds a card's fresh X25519 session key to its Ed25519 identity, to the requester's
nonce (the SHA-256 of the request bytes), to what software the card runs (the measurement) and
to a time. The signature covers :func:`signed_bytes`, a fixed-layout encoding of every field, not
the protobuf bytes: protobuf serialization is not canonical, and a verifier must never have to
trust a parser's idea of which bytes were signed.

The verifier is the seam for a key service: give :func:`verify_report` a mapping of enrolled
device ids to identity keys and the nonce it issued, then wrap the file key to the returned
``SessionKey.recipient``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from google.protobuf.message import DecodeError

from ..errors import AttestationError
from ..fileio import atomic_write_bytes
from ..keyfiles import x25519_recipient_string
from ..recipients import X25519Recipient
from . import report_pb2 as pb

REPORT_VERSION = 1
_DOMAIN = b"modelseal/v1 device attestation report\x00"
DEFAULT_MAX_AGE = 300.0
# A card's clock may run a little ahead of the verifier's; more than this is not a clock error.
MAX_CLOCK_SKEW = 60.0
MAX_REPORT_SIZE = 4096


class IdentityKey(Protocol):
    """What signs a card's reports: an Ed25519PrivateKey, or a key kept in a PKCS#11 token.

    ``sign`` must return a pure Ed25519 signature (RFC 8032), which :func:`verify_report` checks.
    """

    def sign(self, data: bytes) -> bytes: ...

    def public_key(self) -> Ed25519PublicKey: ...


def request_digest(request: bytes) -> bytes:
    return hashlib.sha256(request).digest()


@dataclass(frozen=True)
class Report:
    device_id: int
    session_public_key: bytes
    request_digest: bytes
    measurement: bytes
    session_counter: int
    timestamp: int
    signature: bytes = b""
    version: int = REPORT_VERSION

    def signed_bytes(self) -> bytes:
        """Domain tag, then every field at a fixed width (or length-prefixed), in proto field order."""
        return b"".join(
            (
                _DOMAIN,
                struct.pack(">II", self.version, self.device_id),
                _prefixed(self.session_public_key),
                _prefixed(self.request_digest),
                _prefixed(self.measurement),
                struct.pack(">QQ", self.session_counter, self.timestamp),
            )
        )

    def signed_by(self, key: IdentityKey) -> Report:
        return Report(
            self.device_id,
            self.session_public_key,
            self.request_digest,
            self.measurement,
            self.session_counter,
            self.timestamp,
            key.sign(self.signed_bytes()),
            self.version,
        )

    def to_bytes(self) -> bytes:
        data: bytes = self.to_message().SerializeToString()
        return data

    def to_message(self) -> pb.AttestationReport:
        return pb.AttestationReport(
            version=self.version,
            device_id=self.device_id,
            session_public_key=self.session_public_key,
            request_digest=self.request_digest,
            measurement=self.measurement,
            session_counter=self.session_counter,
            timestamp=self.timestamp,
            signature=self.signature,
        )

    @classmethod
    def from_message(cls, m: pb.AttestationReport) -> Report:
        return cls(
            m.device_id,
            m.session_public_key,
            m.request_digest,
            m.measurement,
            m.session_counter,
            m.timestamp,
            m.signature,
            m.version,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Report:
        if len(data) > MAX_REPORT_SIZE:
            raise AttestationError(f"not an attestation report (larger than {MAX_REPORT_SIZE} bytes)")
        message = pb.AttestationReport()
        try:
            message.ParseFromString(data)
        except DecodeError:
            raise AttestationError("not an attestation report (unparsable)") from None
        report = cls.from_message(message)
        if report.version != REPORT_VERSION:
            raise AttestationError(f"unsupported attestation report version {report.version}")
        if (len(report.session_public_key), len(report.request_digest), len(report.signature)) != (
            32,
            32,
            64,
        ):
            raise AttestationError("malformed attestation report (bad key, digest or signature length)")
        return report

    def as_dict(self) -> dict[str, Any]:
        recipient = None
        if len(self.session_public_key) == 32:
            public = X25519PublicKey.from_public_bytes(self.session_public_key)
            recipient = x25519_recipient_string(X25519Recipient(public))
        return {
            "version": self.version,
            "device_id": self.device_id,
            "session_public_key": recipient,
            "request_digest": self.request_digest.hex(),
            "measurement": self.measurement.hex(),
            "session_counter": self.session_counter,
            "timestamp": self.timestamp,
            "signature": self.signature.hex(),
        }


def _prefixed(field: bytes) -> bytes:
    return struct.pack(">I", len(field)) + field


@dataclass(frozen=True)
class SessionKey:
    """A verified session public key of one card, bound to its device slot."""

    device_id: int
    recipient: X25519Recipient
    session_counter: int
    timestamp: int
    measurement: bytes

    @property
    def text(self) -> str:
        return x25519_recipient_string(self.recipient)

    def write(self, path: str | Path, *, overwrite: bool = False) -> None:
        """A key file ``--pub-keys`` and ``-r`` read; its ``# device:`` line binds the key to the slot."""
        atomic_write_bytes(
            path,
            (
                f"# modelseal attested session public key (session {self.session_counter})\n"
                f"# device: {self.device_id}\n{self.text}\n"
            ).encode(),
            0o644,
            overwrite=overwrite,
        )


def verify_report(
    report: bytes | Report,
    device_keys: Ed25519PublicKey | Mapping[int, Ed25519PublicKey],
    request: bytes,
    *,
    device_id: int | None = None,
    measurement: bytes | None = None,
    max_age: float = DEFAULT_MAX_AGE,
    now: float | None = None,
) -> SessionKey:
    """Check a report and return its session key; raise AttestationError on any doubt.

    ``device_keys`` is the card's identity key, or the enrolled keys by device id (then a report
    from an id without a key is refused). ``request`` is the exact request bytes sent to the card:
    a report for another request (a replay) fails. ``measurement`` and ``device_id``, when given,
    must match. A report older than ``max_age`` seconds, or from too far in the future, fails.
    """
    r = report if isinstance(report, Report) else Report.from_bytes(report)
    if isinstance(device_keys, Mapping):
        key = device_keys.get(r.device_id)
        if key is None:
            raise AttestationError(f"report from unknown device {r.device_id} (no enrolled identity key)")
    else:
        key = device_keys
    try:
        key.verify(r.signature, r.signed_bytes())
    except InvalidSignature:
        raise AttestationError(
            "report signature does not verify with the device identity key: forged, altered or another device"
        ) from None
    if device_id is not None and r.device_id != device_id:
        raise AttestationError(f"report is from device {r.device_id}, not device {device_id}")
    if not hmac.compare_digest(r.request_digest, request_digest(request)):
        raise AttestationError("report is for another request (replayed or stale): attest again")
    if measurement is not None and not hmac.compare_digest(r.measurement, measurement):
        raise AttestationError(
            f"device software measurement {r.measurement.hex()} is not the expected {measurement.hex()}"
        )
    age = (time.time() if now is None else now) - r.timestamp
    if age > max_age:
        raise AttestationError(f"report is {age:.0f} s old (allowed {max_age:.0f} s): attest again")
    if age < -MAX_CLOCK_SKEW:
        raise AttestationError(f"report is dated {-age:.0f} s in the future: check the device clock")
    try:
        public = X25519PublicKey.from_public_bytes(r.session_public_key)
    except ValueError:
        raise AttestationError("malformed attestation report (bad session public key)") from None
    return SessionKey(
        r.device_id,
        X25519Recipient(public, slot=str(r.device_id)),
        r.session_counter,
        r.timestamp,
        r.measurement,
    )
