"""POST /v1/release: a device's key release (PSK proof in the body, no token), the hot path.

A plain Starlette route with its small body parsed by hand (http_common.parse_release): FastAPI's
dependency injection and validation would cost ~110 µs a request (docs/architecture.md). Unsealed
POSTs are answered before the app's middleware and route table (release_fastpath.py); the route is
in the table too, for its 405 on other methods and the sealed guard.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from ...service.http import NO_STORE, error_response
from ..errors import Unavailable
from .admission import ReleaseGate, queue_full_response
from .device_rows import ReleaseDenied
from .devices import DeviceStore
from .group_commit import CommitQueueFull, Decide, OnConflict
from .http_common import API_PREFIX, MAX_RELEASE_BODY, BadRelease, denied, device_body, parse_release
from .release import ReleaseTarget
from .release_fastpath import Endpoint, VaultApp
from .store import Store

T = TypeVar("T", bound=ReleaseTarget)


async def answer_release(
    gate: ReleaseGate, steps: tuple[Decide, OnConflict], target: ReleaseTarget
) -> Response:
    """Run one release decision through the gate and answer it; the same for a PSK proof and an
    attestation report: 200 with the sealed key, the one 403 body for every refusal, 429/503 when
    over capacity, 503 when storage failed (the transaction rolled back: nothing was released)."""
    try:
        sealed = await gate.release(*steps)
    except ReleaseDenied:
        return denied()
    except CommitQueueFull as e:
        return queue_full_response(e)
    except Unavailable as e:
        return error_response(503, e.code, e.message)
    except Exception:
        return error_response(
            503, "release_failed", "the vault could not record the release; nothing was released"
        )
    answer = {
        "key_name": target.key_name,
        "key_version": target.key_version,
        "sealed": base64.b64encode(sealed).decode(),
    }
    return Response(json.dumps(answer), 200, headers=NO_STORE, media_type="application/json")


def release_endpoint(
    store: Store,
    limit: int,
    parse: Callable[[bytes], T],
    route: Callable[[T], tuple[ReleaseGate, tuple[Decide, OnConflict]]],
) -> Endpoint:
    """A release route's endpoint, whichever proof its body carries (PSK request or attestation
    report): sealed -> 503, over ``limit`` -> 413, unparsable -> 400 naming the field, else the
    decision ``route`` gives for the parsed request, answered by :func:`answer_release`. No bearer
    token: the proof in the body is the device's authentication."""

    async def release(request: Request) -> Response:
        data = await device_body(store.barrier.sealed, request, limit, "release")
        if isinstance(data, Response):
            return data
        try:
            req = parse(data)
        except BadRelease as e:
            return error_response(400, "invalid_request", f"invalid request field: {e}")
        gate, steps = route(req)
        return await answer_release(gate, steps, req)

    return release


def add_routes(app: VaultApp, store: Store, devices: DeviceStore, gate: ReleaseGate) -> Endpoint:
    """Register the release route; returns its guarded endpoint for the fast path."""

    release = release_endpoint(
        store, MAX_RELEASE_BODY, parse_release, lambda req: (gate, devices.releases.release_steps(req))
    )

    # In the route table too: its 405 for other methods, and POSTs while sealed reach the sealed
    # guard through the app's middleware. Unsealed POSTs take the fast path (set at the end).
    guarded_release = gate.guard(release)
    app.add_route(f"{API_PREFIX}/release", guarded_release, methods=["POST"], include_in_schema=False)
    return guarded_release
