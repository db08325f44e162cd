"""What the vault's HTTP routes share: the API prefix, the roles of each kind of route, and the
key-release body (parsed by hand: it is the hot path, see app.py)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response

from ...keyrelease import datakeys, wire
from ...keyrelease.wire import DEFAULT_DOMAIN
from ...service.http import NO_STORE, error_response, read_bounded
from .callers import Principal
from .device_rows import ReleaseDenied
from .release import ReleaseRequest

API_PREFIX = "/v1"

# Who may do what, per domain. Unwrap is admin/operator only: devices get keys through /v1/release.
WRITE_KEYS = ("admin", "operator")

READ_KEYS = ("admin", "operator", "auditor")

READ_AUDIT = ("admin", "auditor")

MAX_RELEASE_BODY = 4096

# One body for every refused release, so unknown device, wrong PSK, revoked and locked look alike,
# and for every device route (leases, model downloads): a device learns nothing from which refused.
DENIED_BODY = json.dumps(
    {"error": {"code": ReleaseDenied.code, "message": "key release refused"}}, separators=(",", ":")
).encode()

async def device_body(sealed: bool, request: Request, limit: int, what: str) -> bytes | Response:
    """The body of a device route (no token: the proof is in it), or the answer that ends it:
    503 while sealed, 413 over ``limit``."""
    if sealed:
        return error_response(503, "sealed", "the vault is sealed")
    data = await read_bounded(request, limit)
    if data is None:
        return error_response(413, "invalid_request", f"the {what} request is too large")
    return data


def request_path(request: Request) -> str:
    """The path exactly as sent (what a device's headers MAC), without the query."""
    raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
    return bytes(raw_path).split(b"?", 1)[0].decode("latin-1")


def internal_error() -> Response:
    """An unexpected failure, as every route answers it: the documented body, never a traceback."""
    return error_response(500, "internal_error", "the vault failed to handle the request (logged)")


def denied() -> Response:
    return Response(DENIED_BODY, 403, headers=NO_STORE, media_type="application/json")


class BadRelease(Exception):
    """A malformed release request; names the field, never its value."""

def release_b64(body: dict[str, Any], name: str, low: int, high: int) -> bytes:
    value = body.get(name)
    if not isinstance(value, str) or len(value) > 4 * high:
        raise BadRelease(name)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRelease(name) from None
    if not low <= len(raw) <= high:
        raise BadRelease(name)
    return raw

def release_int(body: dict[str, Any], name: str, low: int, high: int) -> int:
    value = body.get(name)
    if type(value) is not int or not low <= value <= high:  # bool is an int subclass: refuse it
        raise BadRelease(name)
    return value

def release_name(body: dict[str, Any], name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str) or not 1 <= len(value) <= 128:
        raise BadRelease(name)
    return value

def json_object(data: bytes) -> dict[str, Any]:
    """A device route's body: one JSON object, else BadRelease("body")."""
    try:
        body = json.loads(data)
    except ValueError:
        raise BadRelease("body") from None
    if not isinstance(body, dict):
        raise BadRelease("body")
    return body


def parse_release(data: bytes) -> ReleaseRequest:
    body = json_object(data)
    return ReleaseRequest(
        domain=release_name(body, "domain", DEFAULT_DOMAIN),
        device=release_name(body, "device"),
        key_name=release_name(body, "key_name"),
        key_version=release_int(body, "key_version", 1, 2**32 - 1),
        wrapped=release_b64(body, "wrapped", datakeys.WRAPPED_SIZE, datakeys.WRAPPED_SIZE),
        timestamp=release_int(body, "timestamp", 0, 2**63 - 1),
        nonce=release_b64(body, "nonce", wire.NONCE_MIN, wire.NONCE_MAX),
        ephemeral_public=release_b64(
            body, "ephemeral_public", wire.PUBLIC_KEY_SIZE, wire.PUBLIC_KEY_SIZE
        ),
        mac=release_b64(body, "mac", wire.MAC_SIZE, wire.MAC_SIZE),
    )


class Allow(Protocol):
    """create_app's role check: refuses (and audits the refusal) unless ``who`` has one of ``roles``."""

    def __call__(self, who: Principal, roles: tuple[str, ...], op: str, target: str = "") -> None: ...
