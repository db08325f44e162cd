"""Route of /v1/lease: a device's lease check (device headers, no token)."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from ...service.http import NO_STORE, error_response
from ..errors import Unavailable
from .device_auth import (
    BadDeviceRequest,
    DeviceRequests,
    parse_device_headers,
)
from .device_rows import ReleaseDenied
from .devices import DeviceStore
from .http_common import API_PREFIX, denied, device_body, request_path
from .leases import MAX_LEASE_BODY, BadLease, Leases, parse_lease
from .store import Store


def add_routes(app: FastAPI, store: Store, devices: DeviceStore) -> Leases:
    leases = Leases(DeviceRequests(devices))

    async def lease(request: Request) -> Response:
        # No token: the device headers are the authentication, and they MAC this exact body.
        data = await device_body(store.barrier.sealed, request, MAX_LEASE_BODY, "lease")
        if isinstance(data, Response):
            return data
        try:
            req = parse_lease(data)
            path = request_path(request)
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
