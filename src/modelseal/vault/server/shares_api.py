"""Sealed-state plumbing of the API: the sealed guard, /v1/sys/unseal and /v1/sys/seal-status.

While the barrier is sealed every route outside /v1/sys (and the OpenAPI document) answers 503
``sealed`` with Retry-After, whatever the route does: a route added later that forgets to check
the barrier still fails closed. The guard is plain ASGI (no BaseHTTPMiddleware): the release hot
path pays one attribute read. It also gives every 429/503 a Retry-After, so clients back off.

POST /v1/sys/unseal takes ``{"share": "msvault1:..."}`` without a token (as HashiCorp Vault does:
the share is the credential) and is rate-limited by the barrier. The share is never logged or
echoed; errors name the problem only.
"""

from __future__ import annotations

import contextlib
import json
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...keyrelease.wire import DEFAULT_DOMAIN
from ...service.http import NO_STORE, error_response, read_bounded
from ..errors import KeyServiceError
from .barrier import Barrier, Unsealable
from .callers import Principal
from .http_common import API_PREFIX
from .roots.shamir import MAX_SHARE_TEXT, UnsealRateLimited
from .store import Store

SYS_PREFIX = f"{API_PREFIX}/sys/"
# Reachable while sealed: the sys endpoints and the API description, nothing holding data.
OPEN_WHILE_SEALED = (SYS_PREFIX, f"{API_PREFIX}/openapi.json", f"{API_PREFIX}/docs")
SEALED_RETRY_AFTER = "5"
MAX_UNSEAL_BODY = MAX_SHARE_TEXT + 64

_SEALED_BODY = json.dumps(
    {"error": {"code": "sealed", "message": "the vault is sealed"}}, separators=(",", ":")
).encode()


class SealedGuard:
    """503 for everything but the sys endpoints while sealed; Retry-After on every 429 and 503."""

    def __init__(self, app: ASGIApp, barrier: Barrier) -> None:
        self.app = app
        self.barrier = barrier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.barrier.sealed and not str(scope.get("path", "")).startswith(OPEN_WHILE_SEALED):
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(_SEALED_BODY)).encode()),
                        (b"cache-control", b"no-store"),
                        (b"retry-after", SEALED_RETRY_AFTER.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _SEALED_BODY})
            return

        async def send_with_retry_after(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in (429, 503):
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"retry-after" for name, _ in headers):
                    headers.append((b"retry-after", SEALED_RETRY_AFTER.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_retry_after)


async def _read_share(request: Request) -> str | None:
    """The share from a bounded body, or None when the body is not ``{"share": "<text>"}``."""
    data = await read_bounded(request, MAX_UNSEAL_BODY)
    if data is None:
        return None
    try:
        body = json.loads(data)
    except ValueError:
        return None
    share = body.get("share") if isinstance(body, dict) else None
    return share if isinstance(share, str) else None


def add_routes(app: FastAPI, store: Store) -> None:
    app.add_middleware(SealedGuard, barrier=store.barrier)

    @app.get(f"{API_PREFIX}/sys/seal-status")
    def seal_status() -> JSONResponse:
        barrier = store.barrier
        status = barrier.unseal_status() if isinstance(barrier, Unsealable) else {"sealed": barrier.sealed}
        return JSONResponse(status, headers=NO_STORE)

    @app.post(
        f"{API_PREFIX}/sys/unseal",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["share"],
                            "properties": {"share": {"type": "string", "maxLength": MAX_SHARE_TEXT}},
                        }
                    }
                },
            }
        },
    )
    async def unseal(request: Request) -> Response:
        """Give one Shamir share; no token. Answers the progress, then ``{"sealed": false}``."""
        barrier = store.barrier
        if not isinstance(barrier, Unsealable):
            if not barrier.sealed:
                return JSONResponse({"sealed": False}, headers=NO_STORE)
            return error_response(
                400, "not_unsealable", "this vault's root is not Shamir shares: restart it to unseal it"
            )
        share = await _read_share(request)
        if share is None:
            return error_response(400, "invalid_request", 'the body must be {"share": "<one share>"}')
        was_sealed = barrier.sealed
        try:
            source = request.client.host if request.client else ""
            answer = await run_in_threadpool(barrier.submit_share, share, source)
        except UnsealRateLimited as e:
            return error_response(429, e.code, e.message, {"Retry-After": str(e.retry_after)})
        except KeyServiceError as e:
            return error_response(e.status, e.code, e.message)
        if was_sealed and answer.get("sealed") is False:
            try:
                await run_in_threadpool(store.check_integrity)
            except KeyServiceError as e:
                barrier.seal()  # the database is not the one this vault wrote: serve nothing from it
                _log.error("refusing to unseal: %s", e.message)
                return error_response(e.status, e.code, e.message)
            await run_in_threadpool(_record_unseal, store)
        return JSONResponse(answer, headers=NO_STORE)


_log = logging.getLogger("modelseal.vault")


def _record_unseal(store: Store) -> None:
    # The vault is unsealed either way: this audit record is best effort, not a precondition.
    with contextlib.suppress(Exception):
        store.record(Principal("shares", "system", DEFAULT_DOMAIN, 0), "sys.unseal")
