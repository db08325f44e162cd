"""What a request may cost the vault before anyone knows who sent it.

FastAPI reads and parses a route's whole body before its dependencies run, so the token check came
after the body: a 400 MB body with no token took the vault from 122 MB to 942 MB of RSS (never
given back). This middleware runs first. A route that needs a token and has no ``Authorization:
Bearer`` header is answered 401 before one byte of its body is read; every body is capped
(``MAX_BODY``, answered 413 as soon as the declared length or the bytes received pass it). The
device routes carry their proof in the body and bound it themselves (a few KiB); the model upload
streams to disk under its own limit, after its token and role were checked.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...service.http import error_response
from .http_common import API_PREFIX

MAX_BODY = 64 << 10
# Routes that take no bearer token (their own proof, or none), by path prefix.
TOKENLESS = tuple(
    f"{API_PREFIX}{p}"
    for p in (
        "/sys/health", "/sys/ready", "/sys/unseal", "/sys/seal-status", "/sys/metrics", "/release",
        "/attest/", "/lease", "/openapi.json",
    )
)  # fmt: skip
MODELS = f"{API_PREFIX}/models/"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


class RequestLimits:
    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = str(scope.get("path", "")), str(scope.get("method", ""))
        upload = method == "PUT" and path.startswith(MODELS)
        # GET /v1/models/{id}[/content] takes a token or a device's headers: the route decides.
        tokenless = path.startswith(TOKENLESS) or (path.startswith(MODELS) and not upload)
        if not tokenless and not (_header(scope, b"authorization") or b"").lower().startswith(b"bearer "):
            await error_response(401, "unauthenticated", "missing bearer token")(scope, receive, send)
            return
        if upload:
            await self.app(scope, receive, send)  # streamed to disk under its own limit
            return
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            await self._too_large(scope, receive, send)
            return
        await self._bounded(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"the request body is larger than {self.max_body} bytes"
        await error_response(413, "too_large", message)(scope, receive, send)

    async def _bounded(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        refused = False
        started = False

        async def counted() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body and not refused:
                    refused = True
                    if not started:
                        await self._too_large(scope, receive, guarded_send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                if started:
                    return  # ours went first: the app's answer to a cut-off body is dropped
                started = True
            elif refused and not started:
                return
            await send(message)

        async def app_send(message: Message) -> None:
            if refused:
                return
            await guarded_send(message)

        await self.app(scope, counted, app_send)
