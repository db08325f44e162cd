"""Routes of attestation-based release: enrolment of a card's identity key (token), and the
challenge and release (no token: the report is the proof)."""

# No `from __future__ import annotations`: FastAPI evaluates the route signatures.
import base64
import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ...errors import AttestationError
from ...keyrelease import datakeys, wire
from ...keyrelease.report import MAX_REPORT_SIZE, Report
from ...keyrelease.wire import DEFAULT_DOMAIN
from ...service.http import NO_STORE, error_response
from ..errors import Unavailable
from .admission import ReleaseGate, ReleaseSettings
from .attestation import (
    MAX_ATTEST_BODY,
    MAX_CHALLENGE_BODY,
    NONCE_TTL_SECONDS,
    Attestation,
    AttestedRelease,
    max_report_age_from_env,
    parse_identity,
)
from .callers import Principal
from .devices import DeviceStore
from .http_common import (
    WRITE_KEYS,
    BadRelease,
    device_body,
    json_object,
    release_b64,
    release_int,
    release_name,
)
from .release_api import release_endpoint

# --- HTTP ---------------------------------------------------------------------------------------


class EnrollIdentity(BaseModel):
    public_key: str = Field(max_length=64, description="base64 of the raw 32-byte Ed25519 public key")
    measurement: str | None = Field(default=None, max_length=64, description="64 hex digits, or null")


def parse_challenge(data: bytes) -> tuple[str, str]:
    body = json_object(data)
    return release_name(body, "domain", DEFAULT_DOMAIN), release_name(body, "device")


def parse_attested_release(data: bytes) -> AttestedRelease:
    body = json_object(data)
    domain = release_name(body, "domain", DEFAULT_DOMAIN)
    device = release_name(body, "device")
    raw = release_b64(body, "report", 1, MAX_REPORT_SIZE)
    try:
        report = Report.from_bytes(raw)
    except AttestationError:
        raise BadRelease("report") from None
    return AttestedRelease(
        domain=domain,
        device=device,
        report=report,
        key_name=release_name(body, "key_name"),
        key_version=release_int(body, "key_version", 1, 2**32 - 1),
        wrapped=release_b64(body, "wrapped", datakeys.WRAPPED_SIZE, datakeys.WRAPPED_SIZE),
        nonce=release_b64(body, "nonce", wire.ATTEST_NONCE_SIZE, wire.ATTEST_NONCE_SIZE),
    )


def _json(answer: dict[str, Any]) -> Response:
    return Response(json.dumps(answer), 200, headers=NO_STORE, media_type="application/json")


def add_routes(
    app: FastAPI,
    devices: DeviceStore,
    caller: Callable[..., Principal],
    allow: Callable[[Principal, tuple[str, ...], str, str], None],
    gate: ReleaseGate | None = None,
) -> Attestation:
    """Register enrolment (FastAPI, token) and challenge + release (plain Starlette, no token).

    ``gate`` (admission.py) is the PSK release's: one in-flight limit and one group committer.
    """
    store = devices.store
    service = Attestation(devices, max_report_age=max_report_age_from_env())
    gate = gate or ReleaseGate(devices, ReleaseSettings(group_commit=False))

    @app.post("/v1/devices/{name}/identity")
    def enroll(who: Annotated[Principal, Depends(caller)], name: str, body: EnrollIdentity) -> dict[str, Any]:
        allow(who, WRITE_KEYS, "device.enroll", name)
        public_key, measurement = parse_identity(body.public_key, body.measurement)
        return service.enroll(who, name, public_key, measurement)

    async def challenge(request: Request) -> Response:
        data = await device_body(store.barrier.sealed, request, MAX_CHALLENGE_BODY, "challenge")
        if isinstance(data, Response):
            return data
        try:
            domain, device = parse_challenge(data)
        except BadRelease as e:
            return error_response(400, "invalid_request", f"invalid request field: {e}")
        try:
            nonce = await run_in_threadpool(service.challenge, domain, device)
        except Unavailable as e:
            return error_response(503, e.code, e.message)
        except Exception:
            return error_response(503, "challenge_failed", "the vault could not issue a challenge")
        return _json({"nonce": base64.b64encode(nonce).decode(), "expires_in": NONCE_TTL_SECONDS})

    release = release_endpoint(
        store, MAX_ATTEST_BODY, parse_attested_release, lambda req: (gate, service.release_steps(req))
    )

    app.add_route("/v1/attest/challenge", challenge, methods=["POST"], include_in_schema=False)
    app.add_route("/v1/attest/release", gate.guard(release), methods=["POST"], include_in_schema=False)
    return service
