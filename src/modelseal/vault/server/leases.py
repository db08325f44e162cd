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

from fastapi import FastAPI, Request
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from ...keyrelease.wire import DEFAULT_DOMAIN
from ...service.http import NO_STORE, error_response, read_bounded
from ..errors import Unavailable
from .device_auth import (
    BadDeviceRequest,
    DeviceProof,
    DeviceRequests,
    Grant,
    Outcome,
    parse_device_headers,
)
from .device_rows import ID_PATTERN, ReleaseDenied, iso_time
from .devices import DeviceStore
from .http_common import API_PREFIX
from .repository import ModelRecord, denied, key_refs_of
from .schema import Device
from .store import Store

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

        def decide(session: Session, device: Device, at: float, out: Outcome) -> dict[str, Any]:
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


def add_routes(app: FastAPI, store: Store, devices: DeviceStore) -> Leases:
    leases = Leases(DeviceRequests(devices))

    async def lease(request: Request) -> Response:
        # No token: the device headers are the authentication, and they MAC this exact body.
        if store.barrier.sealed:
            return error_response(503, "sealed", "the vault is sealed")
        data = await read_bounded(request, MAX_LEASE_BODY)
        if data is None:
            return error_response(413, "invalid_request", "the lease request is too large")
        raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
        path = bytes(raw_path).split(b"?", 1)[0].decode("latin-1")
        try:
            req = parse_lease(data)
            proof = parse_device_headers(request.headers, method="POST", path=path, body=data)
        except (BadLease, BadDeviceRequest) as e:
            return error_response(400, "invalid_request", f"invalid request field: {e}")
        for name, claimed, proven in (
            ("domain", req.domain, proof.domain),
            ("device", req.device, proof.device),
        ):
            if claimed != proven:
                return error_response(
                    400, "invalid_request", f"invalid request field: {name} (differs from its header)"
                )
        try:
            answer = await run_in_threadpool(leases.check, proof, req)
        except ReleaseDenied:
            return denied()
        except Unavailable as e:
            return error_response(503, e.code, e.message)
        except Exception:
            # Storage or audit failure: rolled back, so the nonce was not consumed either.
            return error_response(503, "lease_failed", "the vault could not record the lease check")
        return Response(json.dumps(answer), 200, headers=NO_STORE, media_type="application/json")

    app.add_route(f"{API_PREFIX}/lease", lease, methods=["POST"], include_in_schema=False)
    return leases
