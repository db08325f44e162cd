"""Devices with pre-shared keys, policies and licences: what the admin routes create, read, rotate
and revoke. Every change is one transaction with its audit record. The key release that reads them
is release.py's ReleaseDecider."""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

from sqlalchemy import (
    delete,
    select,
)
from sqlalchemy.orm import Session

from ...keyrelease import wire
from ..errors import KeyServiceError, NotFound
from .callers import Principal
from .device_rows import (
    check_id,
    check_names,
    identity_of,
    identity_row,
    iso_time,
    parse_time,
    psk_row,
)
from .release import LOCKOUT_FAILURES, ReleaseDecider
from .schema import AuthFailure, Device, Licence, Policy, now
from .store import Store


class DeviceStore:
    """Devices, policies and licences (the admin routes), on top of a Store (same engine, barrier,
    audit); ``releases`` decides key releases against them (release.py)."""

    def __init__(self, store: Store, releases: ReleaseDecider | None = None) -> None:
        self.store = store
        self.releases = releases or ReleaseDecider(store)


    # --- devices ---------------------------------------------------------------------------------

    def _device(self, session: Session, who: Principal, name: str) -> Device:
        check_id("device", name)
        device = session.execute(
            select(Device).where(Device.domain_id == who.domain_id, Device.name == name)
        ).scalar()
        if device is None:
            raise NotFound(f"no device {name!r}")
        return device

    def _set_psk(self, device: Device) -> bytes:
        psk = os.urandom(wire.PSK_SIZE)
        device.psk = self.store.barrier.encrypt(
            psk, table="devices", row=psk_row(device), purpose="psk"
        )
        return psk

    def set_identity(self, device: Device, public_key: bytes, measurement: bytes | None) -> None:
        """Enrol (or replace) the device's identity key; a new generation retires the old blob."""
        device.identity_generation += 1
        device.identity_enrolled = now()
        device.identity = self.store.barrier.encrypt(
            public_key + (measurement or b""),
            table="devices",
            row=identity_row(device),
            purpose="identity",
        )

    def _identity_meta(self, device: Device) -> dict[str, Any] | None:
        identity = identity_of(self.store.barrier, device)
        if identity is None:
            return None
        public, measurement = identity
        return {
            "public_key": base64.b64encode(public).decode(),
            "measurement": measurement.hex() if measurement is not None else None,
            "enrolled": device.identity_enrolled,
            "generation": device.identity_generation,
        }


    def _meta(self, session: Session, device: Device) -> dict[str, Any]:
        failures = self.releases.device_failures(session, device, time.time())
        return {
            "name": device.name,
            "groups": json.loads(device.groups),
            "created": device.created,
            "psk_generation": device.psk_generation,
            "psk_rotated": device.psk_rotated,
            "revoked": device.revoked,
            "revoked_at": device.revoked_at,
            "locked": failures >= LOCKOUT_FAILURES,
            "recent_failures": failures,
            "identity": self._identity_meta(device),
        }

    def create_device(self, who: Principal, name: str, groups: list[str]) -> tuple[dict[str, Any], bytes]:
        check_id("device", name)
        clean = check_names("group", groups)

        def run(session: Session) -> tuple[dict[str, Any], bytes]:
            exists = session.execute(
                select(Device.id).where(Device.domain_id == who.domain_id, Device.name == name)
            ).scalar()
            if exists is not None:
                raise KeyServiceError(f"device {name!r} exists", code="exists", status=409)
            when = now()
            device = Device(
                domain_id=who.domain_id,
                name=name,
                groups=json.dumps(clean),
                created=when,
                psk_generation=1,
                psk_rotated=when,
                psk=b"",
                revoked=False,
            )
            psk = self._set_psk(device)
            session.add(device)
            session.flush()
            self.store.audit.record(
                session,
                who.domain,
                "device.create",
                who.accessor,
                device=name,
                groups=clean,
                psk_generation=1,
                psk_hmac=self.store.secret_digest("psk", psk),
            )
            return self._meta(session, device), psk

        return self.store.operation(who, "device.create", name, run)

    def rotate_psk(self, who: Principal, name: str) -> tuple[dict[str, Any], bytes]:
        def run(session: Session) -> tuple[dict[str, Any], bytes]:
            device = self._device(session, who, name)
            device.psk_generation += 1
            device.psk_rotated = now()
            psk = self._set_psk(device)
            session.flush()
            self.store.audit.record(
                session,
                who.domain,
                "device.rotate_psk",
                who.accessor,
                device=name,
                psk_generation=device.psk_generation,
                psk_hmac=self.store.secret_digest("psk", psk),
            )
            return self._meta(session, device), psk

        return self.store.operation(who, "device.rotate_psk", name, run)

    def revoke_device(self, who: Principal, name: str) -> dict[str, Any]:
        def run(session: Session) -> dict[str, Any]:
            device = self._device(session, who, name)
            if not device.revoked:
                device.revoked, device.revoked_at = True, now()
            session.flush()
            self.store.audit.record(session, who.domain, "device.revoke", who.accessor, device=name)
            return self._meta(session, device)

        return self.store.operation(who, "device.revoke", name, run)

    def unlock_device(self, who: Principal, name: str) -> dict[str, Any]:
        def run(session: Session) -> dict[str, Any]:
            device = self._device(session, who, name)
            subject = self.releases.failure_subject(device.domain_id, "", device.name)
            session.execute(delete(AuthFailure).where(AuthFailure.subject == subject))
            self.store.audit.record(session, who.domain, "device.unlock", who.accessor, device=name)
            return self._meta(session, device)

        return self.store.operation(who, "device.unlock", name, run)

    def list_devices(self, who: Principal) -> list[str]:
        def run(session: Session) -> list[str]:
            names = session.execute(
                select(Device.name).where(Device.domain_id == who.domain_id).order_by(Device.name)
            ).scalars()
            self.store.audit.record(session, who.domain, "device.list", who.accessor)
            return list(names)

        return self.store.operation(who, "device.list", "", run)

    def read_device(self, who: Principal, name: str) -> dict[str, Any]:
        def run(session: Session) -> dict[str, Any]:
            meta = self._meta(session, self._device(session, who, name))
            self.store.audit.record(session, who.domain, "device.read", who.accessor, device=name)
            return meta

        return self.store.operation(who, "device.read", name, run)

    # --- policies and licences -------------------------------------------------------------------

    @staticmethod
    def _policy_dict(policy: Policy) -> dict[str, Any]:
        return {
            "name": policy.name,
            "key": policy.key_name,
            "devices": json.loads(policy.devices),
            "groups": json.loads(policy.groups),
            "created": policy.created,
            "updated": policy.updated,
        }

    def _policy(self, session: Session, who: Principal, name: str) -> Policy:
        check_id("policy", name)
        policy = session.execute(
            select(Policy).where(Policy.domain_id == who.domain_id, Policy.name == name)
        ).scalar()
        if policy is None:
            raise NotFound(f"no policy {name!r}")
        return policy

    def put_policy(
        self, who: Principal, name: str, key: str, devices: list[str], groups: list[str]
    ) -> dict[str, Any]:
        """Create or replace: a policy is the whole list of who may get one master key's data keys."""
        check_id("policy", name)
        check_id("key", key)
        clean_devices, clean_groups = check_names("device", devices), check_names("group", groups)

        def run(session: Session) -> dict[str, Any]:
            self.store._key(session, who, key)  # a policy for a key that doesn't exist is a typo
            policy = session.execute(
                select(Policy).where(Policy.domain_id == who.domain_id, Policy.name == name)
            ).scalar()
            when = now()
            if policy is None:
                policy = Policy(domain_id=who.domain_id, name=name, created=when)
                session.add(policy)
            policy.key_name, policy.updated = key, when
            policy.devices, policy.groups = json.dumps(clean_devices), json.dumps(clean_groups)
            session.flush()
            self.store.audit.record(
                session,
                who.domain,
                "policy.write",
                who.accessor,
                policy=name,
                key=key,
                devices=clean_devices,
                groups=clean_groups,
            )
            return self._policy_dict(policy)

        return self.store.operation(who, "policy.write", name, run)

    def list_policies(self, who: Principal) -> list[str]:
        def run(session: Session) -> list[str]:
            names = session.execute(
                select(Policy.name).where(Policy.domain_id == who.domain_id).order_by(Policy.name)
            ).scalars()
            self.store.audit.record(session, who.domain, "policy.list", who.accessor)
            return list(names)

        return self.store.operation(who, "policy.list", "", run)

    def read_policy(self, who: Principal, name: str) -> dict[str, Any]:
        def run(session: Session) -> dict[str, Any]:
            out = self._policy_dict(self._policy(session, who, name))
            self.store.audit.record(session, who.domain, "policy.read", who.accessor, policy=name)
            return out

        return self.store.operation(who, "policy.read", name, run)

    def _licence_dict(self, session: Session, licence: Licence, policy: str) -> dict[str, Any]:
        return {
            "name": licence.name,
            "policy": policy,
            "created": licence.created,
            "not_after": iso_time(licence.not_after),
            "max_uses": licence.max_uses,
            "max_devices": licence.max_devices,
            "uses": licence.uses,
            "devices": licence.device_count,
        }

    def create_licence(
        self,
        who: Principal,
        name: str,
        policy: str,
        *,
        not_after: str | None,
        max_uses: int | None,
        max_devices: int | None,
    ) -> dict[str, Any]:
        check_id("licence", name)
        deadline = parse_time(not_after) if not_after is not None else None
        for label, limit in (("max_uses", max_uses), ("max_devices", max_devices)):
            if limit is not None and limit < 0:
                raise KeyServiceError(f"{label} must be 0 or more", code="invalid_request")

        def run(session: Session) -> dict[str, Any]:
            owner = self._policy(session, who, policy)
            exists = session.execute(
                select(Licence.id).where(Licence.domain_id == who.domain_id, Licence.name == name)
            ).scalar()
            if exists is not None:
                raise KeyServiceError(f"licence {name!r} exists", code="exists", status=409)
            licence = Licence(
                domain_id=who.domain_id,
                name=name,
                policy_id=owner.id,
                created=now(),
                not_after=deadline,
                max_uses=max_uses,
                max_devices=max_devices,
                uses=0,
            )
            session.add(licence)
            session.flush()
            self.store.audit.record(
                session,
                who.domain,
                "licence.create",
                who.accessor,
                licence=name,
                policy=policy,
                not_after=iso_time(deadline),
                max_uses=max_uses,
                max_devices=max_devices,
            )
            return self._licence_dict(session, licence, policy)

        return self.store.operation(who, "licence.create", name, run)

    def read_licence(self, who: Principal, name: str) -> dict[str, Any]:
        def run(session: Session) -> dict[str, Any]:
            check_id("licence", name)
            row = session.execute(
                select(Licence, Policy.name)
                .join(Policy, Policy.id == Licence.policy_id)
                .where(Licence.domain_id == who.domain_id, Licence.name == name)
            ).first()
            if row is None:
                raise NotFound(f"no licence {name!r}")
            self.store.audit.record(session, who.domain, "licence.read", who.accessor, licence=name)
            return self._licence_dict(session, row[0], row[1])

        return self.store.operation(who, "licence.read", name, run)

    # --- key release -----------------------------------------------------------------------------


