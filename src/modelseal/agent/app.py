"""The agent's HTTP API: a narrow, allow-listed forwarder in front of the vault.

Containers talk to it exactly as they would to the vault (same paths, same bodies), so a device
identity works through either. The agent adds what an edge node needs — a connection pool and
retries to the vault, per-caller rate limits, bounded request bodies, a cache of downloaded
ciphertext — and nothing that could open a model: it holds no key, every release answer is
HPKE-sealed to a key that only the asking container has, and device requests are MAC'd with a
PSK that the agent never sees.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..service.http import error_response, read_bounded
from ..service.logs import JsonLog
from ..vault.errors import Unavailable
from .cache import ModelCache, etag_digest
from .limits import RateLimiter, RefusalBudget
from .upstream import Upstream

MAX_BODY = 64 << 10
MAX_PASSTHROUGH = 256 << 10
# What goes to the vault: the device's proof headers and the content type. Nothing else (cookies,
# Authorization, proxy headers) passes, so a container cannot borrow any credential of the node.
_FORWARD_HEADERS = ("content-type",)
_DEVICE_PREFIX = "x-modelseal-"
_ANSWER_HEADERS = ("content-type", "retry-after", "cache-control", "etag")
POST_ROUTES = ("/v1/release", "/v1/lease", "/v1/attest/challenge", "/v1/attest/release")


def _forwarded(request: Request) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k in _FORWARD_HEADERS}
    headers.update({k: v for k, v in request.headers.items() if k.startswith(_DEVICE_PREFIX)})
    return headers


def _answer_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() in _ANSWER_HEADERS}


class _TooLarge(Exception):
    pass


def _claimed_device(request: Request, body: bytes) -> str:
    device = request.headers.get("x-modelseal-device")
    if device is None and body:
        try:
            parsed = json.loads(body)
            device = str(parsed.get("device", "")) if isinstance(parsed, dict) else ""
        except ValueError:
            device = ""
    return (device or "?")[:128]


class Agent:
    def __init__(
        self,
        upstream: Upstream,
        cache: ModelCache,
        limiter: RateLimiter,
        log: JsonLog | None = None,
        *,
        refusals: RefusalBudget | None = None,
    ) -> None:
        self.upstream = upstream
        self.cache = cache
        self.limiter = limiter
        self.log = log or JsonLog()
        self.refusals = refusals or RefusalBudget()

    @staticmethod
    def _peer(request: Request) -> str:
        # On the unix socket: the kernel's word for who connected (service.connections.peer_identity).
        return request.client.host if request.client else "unix"

    def _caller(self, request: Request, device: str) -> str:
        return f"{self._peer(request)}/{device}"

    def _limited(self, caller: str) -> Response | None:
        wait = self.limiter.acquire(caller)
        if wait:
            return error_response(
                429, "rate_limited", "too many requests from this caller", {"Retry-After": str(wait)}
            )
        return None

    def _done(self, request: Request, started: float, status: int, caller: str, **extra: Any) -> None:
        self.log.event(
            "forward",
            method=request.method,
            path=request.url.path,
            status=status,
            ms=round((time.perf_counter() - started) * 1000, 2),
            caller=caller,
            **extra,
        )

    async def health(self, request: Request) -> Response:
        reachable = await self.upstream.reachable()
        return JSONResponse(
            {
                "status": "ok",
                "vault": "reachable" if reachable else "unreachable",
                "retries": self.upstream.retries,
            }
        )

    async def forward_post(self, request: Request) -> Response:
        started = time.perf_counter()
        body = await read_bounded(request, MAX_BODY)
        if body is None:
            self._done(request, started, 413, "?")
            return error_response(413, "invalid_request", f"request bodies are limited to {MAX_BODY} bytes")
        device = _claimed_device(request, body)
        caller = self._caller(request, device)
        refused = self._limited(caller)
        if refused is None and request.url.path != "/v1/attest/challenge":
            wait = self.refusals.exhausted(self._peer(request), device)
            if wait:
                refused = error_response(
                    429,
                    "too_many_refusals",
                    "the vault refused too many proofs from this caller for this device; retry later",
                    {"Retry-After": str(wait)},
                )
        if refused is not None:
            self._done(request, started, 429, caller)
            return refused
        answer = await self._pass_through(request, started, caller, "POST", request.url.path, body)
        if answer.status_code == 403:
            self.refusals.refused(self._peer(request), device)
        return answer

    async def _pass_through(
        self, request: Request, started: float, caller: str, method: str, path: str, body: bytes = b""
    ) -> Response:
        try:
            async with self.upstream.request(
                method, path, headers=_forwarded(request), content=body
            ) as answer:
                content = await _bounded_answer(answer)
                status, headers = answer.status_code, _answer_headers(answer.headers)
        except Unavailable as e:
            self._done(request, started, 502, caller)
            return error_response(502, e.code, e.diagnostic)
        except _TooLarge:
            self._done(request, started, 502, caller)
            return error_response(502, "bad_gateway", "the vault's answer is larger than the agent forwards")
        self._done(request, started, status, caller)
        return Response(content, status, headers=headers)

    async def model_info(self, request: Request) -> Response:
        started = time.perf_counter()
        caller = self._caller(request, _claimed_device(request, b""))
        refused = self._limited(caller)
        if refused is not None:
            self._done(request, started, 429, caller)
            return refused
        path = "/v1/models/" + quote(request.path_params["model_id"], safe="")
        return await self._pass_through(request, started, caller, "GET", path)

    async def model_content(self, request: Request) -> Response:
        """The sealed file, from the node's cache once the vault authorised this device for it."""
        started = time.perf_counter()
        caller = self._caller(request, _claimed_device(request, b""))
        refused = self._limited(caller)
        if refused is not None:
            self._done(request, started, 429, caller)
            return refused
        model_id = request.path_params["model_id"]
        path = "/v1/models/" + quote(model_id, safe="") + "/content"
        cache_key = f"{request.headers.get('x-modelseal-domain', 'default')}/{model_id}"
        cached = self.cache.lookup(cache_key)
        headers = _forwarded(request)
        if cached is not None:
            headers["if-none-match"] = f'"{cached}"'
        try:
            async with self.upstream.request("GET", path, headers=headers) as answer:
                if answer.status_code == 304 and cached is not None:
                    digest, outcome = cached, "hit"
                elif answer.status_code == 200:
                    digest, outcome = await self._store(cache_key, answer), "miss"
                else:
                    content = await _bounded_answer(answer)
                    self._done(request, started, answer.status_code, caller)
                    return Response(content, answer.status_code, headers=_answer_headers(answer.headers))
        except Unavailable as e:
            self._done(request, started, 502, caller)
            return error_response(502, e.code, e.diagnostic)
        except _BadDownload as e:
            self._done(request, started, 502, caller)
            return error_response(502, "bad_gateway", str(e))
        etag = f'"{digest}"'
        if etag_digest(request.headers.get("if-none-match")) == digest:
            self._done(request, started, 304, caller, cache=outcome)
            return Response(status_code=304, headers={"ETag": etag})
        self._done(request, started, 200, caller, cache=outcome)
        return FileResponse(
            self.cache.blob(digest), headers={"ETag": etag}, media_type="application/octet-stream"
        )

    async def _store(self, cache_key: str, answer: Any) -> str:
        digest = etag_digest(answer.headers.get("etag"))
        if digest is None:
            raise _BadDownload("the vault sent a model without a content digest (ETag)")
        fd, temp = self.cache.new_temp()
        hasher = self.cache.hasher()
        try:
            try:
                async for chunk in answer.aiter_bytes(1 << 20):
                    hasher.update(chunk)
                    await anyio.to_thread.run_sync(_write_all, fd, chunk)
                await anyio.to_thread.run_sync(os.fsync, fd)
            finally:
                os.close(fd)
            if hasher.hexdigest() != digest:
                raise _BadDownload("the model downloaded from the vault does not match its digest")
            self.cache.commit(cache_key, temp, digest)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return digest


class _BadDownload(Exception):
    pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def _bounded_answer(answer: Any) -> bytes:
    chunks, size = [], 0
    async for chunk in answer.aiter_bytes():
        size += len(chunk)
        if size > MAX_PASSTHROUGH:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(agent: Agent) -> Starlette:
    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await agent.upstream.aclose()

    routes = [Route("/v1/agent/health", agent.health, methods=["GET"])]
    routes += [Route(path, agent.forward_post, methods=["POST"]) for path in POST_ROUTES]
    routes += [
        Route("/v1/models/{model_id}", agent.model_info, methods=["GET"]),
        Route("/v1/models/{model_id}/content", agent.model_content, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
