"""POST /v1/lease: may this device still use this key (or model)? The edge's periodic re-check.

A device that opened a model asks again every ``recheck_after`` seconds; a revoked device, an
ended licence or a disabled key makes the answer the uniform 403 and the agent closes the model.
The check is a release's (``device_auth``) without its effects: no use is counted, nothing is
released. Like /v1/release it is a plain Starlette route that parses its small body by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ...keyrelease.wire import DEFAULT_DOMAIN
from .device_auth import (
    DeviceProof,
    DeviceRequests,
    Grant,
)
from .device_rows import ID_PATTERN, Decision, iso_time
from .repository import ModelRecord, key_refs_of
from .schema import Device

MAX_LEASE_BODY = 4096
RECHECK_AFTER_SECONDS = 300


class BadLease(Exception):
    """A malformed lease request; names the field, never its value."""


@dataclass(frozen=True)
class LeaseRequest:
    domain: str
    device: str
    key_name: str | None = None
    key_version: int | None = None
    model: str | None = None


def _name(body: dict[str, Any], name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str) or not 1 <= len(value) <= 128:
        raise BadLease(name)
    return value


def parse_lease(data: bytes) -> LeaseRequest:
    try:
        body = json.loads(data)
    except ValueError:
        raise BadLease("body") from None
    if not isinstance(body, dict):
        raise BadLease("body")
    domain, device = _name(body, "domain", DEFAULT_DOMAIN), _name(body, "device")
    if "model" in body:
        if "key_name" in body or "key_version" in body:
            raise BadLease("model")  # one or the other: a key, or a model
        model = _name(body, "model")
        if not ID_PATTERN.fullmatch(model):
            raise BadLease("model")
        return LeaseRequest(domain, device, model=model)
    version = body.get("key_version")
    if type(version) is not int or not 1 <= version <= 2**32 - 1:  # bool is an int: refuse it
        raise BadLease("key_version")
    return LeaseRequest(domain, device, key_name=_name(body, "key_name"), key_version=version)


class Leases:
    def __init__(self, requests: DeviceRequests) -> None:
        self.requests = requests

    def check(self, proof: DeviceProof, req: LeaseRequest) -> dict[str, Any]:
        """The lease answer, or ReleaseDenied; audited as ``lease.check`` in the same transaction."""

        def decide(session: Session, device: Device, at: float, out: Decision) -> dict[str, Any]:
            found: Grant | None
            if req.model is not None:
                row = session.execute(
                    select(ModelRecord).where(
                        ModelRecord.domain_id == device.domain_id, ModelRecord.name == req.model
                    )
                ).scalar()
                if row is None:
                    out.reason = "unknown_model"
                    return {}
                found, reason = self.requests.first_grant(session, device, key_refs_of(row.key_refs), at)
            else:
                assert req.key_name is not None and req.key_version is not None
                found, reason = self.requests.grant(session, device, req.key_name, req.key_version, at)
            if found is None:
                out.reason = reason
                return {}
            out.details.update(
                key=found.key_name,
                version=found.key_version,
                policy=found.policy,
                licences=list(found.licences),
            )
            answer: dict[str, Any] = {
                "valid": True,
                "key_name": found.key_name,
                "key_version": found.key_version,
                "not_after": iso_time(found.not_after),
                "recheck_after": RECHECK_AFTER_SECONDS,
            }
            if req.model is not None:
                answer["model"] = req.model
            return answer

        asked: dict[str, Any] = (
            {"model": req.model}
            if req.model is not None
            else {"key": req.key_name, "version": req.key_version}
        )
        return self.requests.run("lease.check", proof, decide, ok="valid", details=asked)
