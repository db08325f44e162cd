"""POST /v1/release answered before the app's middleware and routing.

Every request through the FastAPI app passes ~10 ASGI layers (Starlette's error and exception
middleware, FastAPI's telemetry, body-limit and exit-stack middleware, the request observer, the
sealed guard) and a route table of ~50 routes matched in order, each layer with its own send
wrapper. That is the same fixed cost for a key release as for a health request, and the release
is the one route on the hot path. Here the vault's outermost ASGI callable (``VaultApp``) sends
it straight to its endpoint, the same function the route table holds, behind the same in-flight
gate, and keeps what those layers did for it:

  * sealed: not taken here, so the app's sealed guard answers (503 + Retry-After) as for any route;
  * Retry-After on every 429 and 503 (the sealed guard's rule);
  * the request's metrics and JSON log line (metrics.RequestRecorder), route template and status
    only;
  * an unexpected exception: 500 with the documented error body (as the app's handler answers),
    then re-raised for the server's log.

Body size bound, parsing, the uniform refusal and the error mapping are the endpoint's own.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from .barrier import Barrier
from .http_common import internal_error
from .metrics import RequestRecorder
from .shares_api import SEALED_RETRY_AFTER

RELEASE_PATH = "/v1/release"
Endpoint = Callable[[Request], Awaitable[Response]]
_RETRY_AFTER = (b"retry-after", SEALED_RETRY_AFTER.encode())


class ReleaseFastPath:
    def __init__(self, endpoint: Endpoint, barrier: Barrier, record: RequestRecorder) -> None:
        self.endpoint = endpoint
        self.barrier = barrier
        self.record = record

    def takes(self, scope: Scope) -> bool:
        return (
            scope["type"] == "http"
            and scope["path"] == RELEASE_PATH
            and scope["method"] == "POST"
            and not self.barrier.sealed
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500  # what the client gets if the endpoint fails before answering
        answered = False

        async def send_observed(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
                if status in (429, 503) and not any(k == b"retry-after" for k, _ in message["headers"]):
                    message = {**message, "headers": [*message["headers"], _RETRY_AFTER]}
            await send(message)

        try:
            response = await self.endpoint(Request(scope, receive))
            await response(scope, receive, send_observed)
        except Exception:
            if not answered:
                await internal_error()(scope, receive, send_observed)
            raise
        finally:
            self.record("POST", RELEASE_PATH, status, time.perf_counter() - started)


class VaultApp(FastAPI):
    """The vault's app: FastAPI, with the key release taken first (``release_fastpath``)."""

    release_fastpath: ReleaseFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.release_fastpath
        if fast is not None and fast.takes(scope):
            await fast(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
