"""Device-authenticated requests: the five X-Modelseal-* headers, checked like a key release.

A device proves its PSK on a lease check or a model download without sending it (the MAC of
``wire.device_request_input``). The checks are the release's, in the same order and with the
same tables: unknown device, revoked, wrong MAC (a failure towards lockout), locked, timestamp
outside the skew window, nonce already seen (the release replay index, shared). Every outcome is
one uniform refusal to the caller; the real reason goes to the audit, written in the transaction
that consumed the nonce and counted the failure.

``grant`` is the release's policy and licence decision without its side effects: nothing is
counted, nothing is released. A licence's ``max_uses`` limits *releases*, so a used-up licence
does not end a lease on a key that was already released; ``not_after`` and ``max_devices`` do.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ...keyrelease import wire
from .device_rows import Decision, ReleaseDenied, psk_row
from .devices import DeviceStore
from .release import LOCKOUT_FAILURES
from .row_macs import RowTampered
from .schema import Device, Domain, Licence, MasterKey, Policy, ReleaseNonce

T = TypeVar("T")
_MAX_NAME = 128
_MAX_TIMESTAMP_DIGITS = 19  # fits u64 and Python's float-free int parsing stays trivial


class BadDeviceRequest(Exception):
    """Malformed device headers; names the header, never its value."""


@dataclass(frozen=True)
class DeviceProof:
    domain: str
    device: str
    method: str
    path: str
    body: bytes = field(repr=False)
    timestamp: int
    nonce: bytes = field(repr=False)
    mac: bytes = field(repr=False)

    def mac_input(self) -> bytes:
        return wire.device_request_input(
            domain=self.domain,
            device=self.device,
            method=self.method,
            path=self.path,
            body=self.body,
            timestamp=self.timestamp,
            nonce=self.nonce,
        )


def has_device_headers(headers: Mapping[str, str]) -> bool:
    return any(name in headers for name in wire.DEVICE_HEADERS)


def _b64_header(headers: Mapping[str, str], name: str, low: int, high: int) -> bytes:
    value = headers.get(name, "")
    if len(value) > 4 * high:
        raise BadDeviceRequest(name)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadDeviceRequest(name) from None
    if not low <= len(raw) <= high:
        raise BadDeviceRequest(name)
    return raw


def _name_header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name, "")
    if not 1 <= len(value) <= _MAX_NAME:
        raise BadDeviceRequest(name)
    return value


def parse_device_headers(headers: Mapping[str, str], *, method: str, path: str, body: bytes) -> DeviceProof:
    """Bound and decode the five headers (``headers`` is case-insensitive, as Starlette's are)."""
    domain = _name_header(headers, "x-modelseal-domain")
    device = _name_header(headers, "x-modelseal-device")
    stamp = headers.get("x-modelseal-timestamp", "")
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= _MAX_TIMESTAMP_DIGITS):
        raise BadDeviceRequest("x-modelseal-timestamp")
    nonce = _b64_header(headers, "x-modelseal-nonce", wire.NONCE_MIN, wire.NONCE_MAX)
    mac = _b64_header(headers, "x-modelseal-mac", wire.MAC_SIZE, wire.MAC_SIZE)
    return DeviceProof(domain, device, method.upper(), path, body, int(stamp), nonce, mac)


@dataclass(frozen=True)
class Grant:
    """A device may use ``key_name`` version ``key_version`` under ``policy`` until ``not_after``."""

    key_name: str
    key_version: int
    policy: str
    licences: tuple[str, ...]
    not_after: float | None


class DeviceRequests:
    """Authenticate device requests and decide grants, on top of the release's DeviceStore."""

    def __init__(self, devices: DeviceStore) -> None:
        self.devices = devices
        self.store = devices.store

    # --- authentication --------------------------------------------------------------------------

    def _authenticate(self, session: Session, proof: DeviceProof, at: float, out: Decision) -> Device | None:
        domain_id = session.execute(select(Domain.id).where(Domain.name == proof.domain)).scalar()
        device = None
        if domain_id is not None:
            out.domain = proof.domain
            try:
                device = session.execute(
                    select(Device).where(Device.domain_id == domain_id, Device.name == proof.device)
                ).scalar()
            except RowTampered as e:
                out.reason, out.details["tampered"] = "tampered_row", e.where
        barrier = self.store.barrier
        if device is None:
            # The same barrier, HMAC and failure work as a known device (as release does).
            psk = barrier.decrypt(self.devices.releases.dummy_blob(), table="devices", row="-", purpose="psk")
        else:
            psk = barrier.decrypt(
                device.psk, table="devices", row=psk_row(device), purpose="psk"
            )
        mac_ok = hmac.compare_digest(wire.mac(psk, proof.mac_input()), proof.mac)

        if device is None:
            out.reason = out.reason or "unknown_device"
        elif device.revoked:
            out.reason = "revoked"
        elif not mac_ok:
            out.reason = "bad_mac"
        subject = self.devices.releases.failure_subject(domain_id, proof.domain, proof.device)
        if out.reason is not None:  # every failed proof counts, so all write the same rows
            self.devices.releases.count_failure(session, subject, at)
        failures = self.devices.releases.recent_failures(session, subject, at)
        out.details["recent_failures"] = failures
        if out.reason is None and failures >= LOCKOUT_FAILURES:
            out.reason = "locked"
        if out.reason is None and abs(at - proof.timestamp) > wire.MAX_SKEW_SECONDS:
            out.reason = "stale_timestamp"
        if out.reason is None and device is not None:
            out.reason = self._consume_nonce(session, device.id, proof)
        return device

    def _consume_nonce(self, session: Session, device_id: int, proof: DeviceProof) -> str | None:
        # The release's replay index: one nonce is single-use across releases and device requests.
        digest = hashlib.sha256(proof.nonce).hexdigest()
        seen = session.execute(
            select(ReleaseNonce.id).where(
                ReleaseNonce.device_id == device_id, ReleaseNonce.nonce_hash == digest
            )
        ).scalar()
        if seen is not None:
            return "replay"
        session.execute(
            delete(ReleaseNonce).where(
                ReleaseNonce.device_id == device_id,
                ReleaseNonce.timestamp < int(time.time()) - wire.MAX_SKEW_SECONDS - 1,
            )
        )
        session.add(ReleaseNonce(device_id=device_id, nonce_hash=digest, timestamp=proof.timestamp))
        session.flush()
        return None

    def record(
        self, session: Session, op: str, proof: DeviceProof, device: Device | None, out: Decision, ok: str
    ) -> None:
        if device is None:
            # The claimed name is attacker-chosen (or a mistyped secret): keep only its HMAC.
            who: dict[str, Any] = {
                "device_hmac": self.store.secret_digest("device name", proof.device.encode())
            }
        else:
            who = {"device": device.name, "psk_generation": device.psk_generation}
        self.store.audit.record(
            session,
            out.domain,
            op,
            f"device:{device.name}" if device is not None else "device:unknown",
            **who,
            method=proof.method,
            path=proof.path,
            outcome=out.reason or ok,
            nonce_hmac=self.store.secret_digest("device request nonce", proof.nonce),
            **out.details,
        )

    def run(
        self,
        op: str,
        proof: DeviceProof,
        decide: Callable[[Session, Device, float, Decision], T],
        *,
        ok: str = "ok",
        details: dict[str, Any] | None = None,
    ) -> T:
        """Authenticate ``proof``, then ``decide`` (which sets ``out.reason`` to refuse), audited.

        One write transaction: nonce, failure count, decision and audit record commit together.
        Any refusal raises ReleaseDenied (the caller answers the uniform 403). ``details`` (what
        was asked for) go to the audit record whatever the outcome.
        """
        at = time.time()
        try:
            with self.store.write_session() as session:
                out = Decision(details=dict(details or {}))
                device = self._authenticate(session, proof, at, out)
                result: T | None = None
                if out.reason is None and device is not None:
                    try:
                        result = decide(session, device, at, out)
                    except RowTampered as e:
                        out.reason, out.details["tampered"], result = "tampered_row", e.where, None
                self.record(session, op, proof, device, out, ok)
        except IntegrityError:
            # Only the (device, nonce) index can refuse here: a concurrent twin committed first.
            self._record_replay(op, proof)
            raise ReleaseDenied() from None
        if out.reason is not None or result is None:
            raise ReleaseDenied()
        return result

    def _record_replay(self, op: str, proof: DeviceProof) -> None:
        try:
            with self.store.write_session() as session:
                self.store.audit.record(
                    session,
                    proof.domain,
                    op,
                    f"device:{proof.device}",
                    device=proof.device,
                    method=proof.method,
                    path=proof.path,
                    outcome="replay",
                    nonce_hmac=self.store.secret_digest("device request nonce", proof.nonce),
                )
        except Exception:  # noqa: S110 - the refusal stands whether or not it could be recorded
            pass

    # --- grants ----------------------------------------------------------------------------------

    def grant(
        self, session: Session, device: Device, key_name: str, key_version: int, at: float
    ) -> tuple[Grant | None, str]:
        """Would a release of this key version to ``device`` pass policy, licence and key checks?

        Returns (grant, "") or (None, the refusal reason). Counts and writes nothing.
        """
        groups = set(json.loads(device.groups))
        policies = [
            p
            for p in session.execute(
                select(Policy)
                .where(Policy.domain_id == device.domain_id, Policy.key_name == key_name)
                .order_by(Policy.name)
            ).scalars()
            if device.name in json.loads(p.devices) or groups & set(json.loads(p.groups))
        ]
        if not policies:
            return None, "no_policy"
        reason = ""
        chosen: tuple[Policy, list[Licence]] | None = None
        for policy in policies:
            found = list(
                session.execute(
                    select(Licence).where(Licence.policy_id == policy.id).order_by(Licence.name)
                ).scalars()
            )
            refusal = next(
                (r for r in (self._licence_refusal(session, lic, device.id, at) for lic in found) if r),
                None,
            )
            if refusal is None:
                chosen = (policy, found)
                break
            reason = reason or refusal
        if chosen is None:
            return None, reason
        key = session.execute(
            select(MasterKey).where(MasterKey.domain_id == device.domain_id, MasterKey.name == key_name)
        ).scalar()
        if key is None:
            return None, "unknown_key"
        if key.disabled:
            return None, "key_disabled"
        if not key.min_decryption_version <= key_version <= key.latest_version:
            return None, "version_retired"
        policy, licences = chosen
        deadlines = [lic.not_after for lic in licences if lic.not_after is not None]
        return (
            Grant(
                key_name,
                key_version,
                policy.name,
                tuple(lic.name for lic in licences),
                min(deadlines) if deadlines else None,
            ),
            "",
        )

    def _licence_refusal(self, session: Session, lic: Licence, device_id: int, at: float) -> str | None:
        if lic.not_after is not None and at > lic.not_after:
            return "licence_expired"
        full = lic.max_devices is not None and lic.device_count >= lic.max_devices
        if full and not self.devices.releases.knows(session, lic.id, device_id):
            return "licence_device_limit"
        return None

    def first_grant(
        self, session: Session, device: Device, key_refs: list[tuple[str, int]], at: float
    ) -> tuple[Grant | None, str]:
        """The first of ``key_refs`` the device may use, or (None, the first refusal reason)."""
        reason = "no_keys"
        for name, version in key_refs:
            found, why = self.grant(session, device, name, version, at)
            if found is not None:
                return found, ""
            reason = why if reason == "no_keys" else reason
        return None, reason
