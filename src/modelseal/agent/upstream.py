"""The agent's connection to the vault: one pooled HTTPS client (mTLS when configured), retries.

Retrying is only safe where the vault cannot have acted on the request: every device request
carries a single-use nonce, so a second copy of a request the vault already saw is refused as a
replay. The agent therefore retries a request only when it never reached the vault (connection
refused or timed out while connecting) or when the vault said it did not process it (429 or 503
with Retry-After), with exponential backoff and full jitter so that many agents do not retry in
step. A read timeout is not retried: the caller retries with a fresh nonce.
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..errors import KeyFileError
from ..vault.errors import Unavailable

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    base_delay: float = 0.05
    max_delay: float = 2.0

    def delay(self, attempt: int, retry_after: str | None) -> float:
        cap = min(self.max_delay, self.base_delay * (2**attempt))
        if retry_after is not None and retry_after.isdigit():
            # Honour the vault's hint, but never wait longer than the policy allows per attempt.
            cap = min(self.max_delay, max(cap, float(retry_after)))
        return random.uniform(0, cap)  # noqa: S311 - jitter, not a secret


def _tls_context(
    ca: str | os.PathLike[str] | None,
    client_cert: str | os.PathLike[str] | None,
    client_key: str | os.PathLike[str] | None,
) -> ssl.SSLContext:
    for label, path in (("CA", ca), ("client certificate", client_cert), ("client key", client_key)):
        if path is not None and not Path(path).is_file():
            raise KeyFileError(f"agent: the vault {label} file {path} does not exist")
    if (client_cert is None) != (client_key is None):
        raise KeyFileError("agent: give both --client-cert and --client-key, or neither")
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if client_cert is not None and client_key is not None:
        try:
            context.load_cert_chain(str(client_cert), str(client_key))
        except (ssl.SSLError, OSError):
            raise KeyFileError(f"agent: cannot load the client certificate {client_cert}") from None
    return context


class Upstream:
    """Forwards requests to the vault at ``url`` and counts what it did (for health and tests)."""

    def __init__(
        self,
        url: str,
        *,
        ca: str | os.PathLike[str] | None = None,
        client_cert: str | os.PathLike[str] | None = None,
        client_key: str | os.PathLike[str] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        if not self.url.startswith(("https://", "http://")):
            raise KeyFileError(f"agent: the vault address must be an https:// URL, not {url!r}")
        self.retry = retry or RetryPolicy()
        verify: ssl.SSLContext | bool = (
            _tls_context(ca, client_cert, client_key) if self.url.startswith("https://") else False
        )
        self._http = httpx.AsyncClient(
            base_url=self.url,
            verify=verify,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            transport=transport,
        )
        self.retries = 0

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, request: httpx.Request) -> httpx.Response:
        last: Exception | None = None
        for attempt in range(self.retry.attempts):
            if attempt:
                self.retries += 1
            try:
                response = await self._http.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                last = e  # never reached the vault: the nonce is unspent, resending is safe
                await asyncio.sleep(self.retry.delay(attempt, None))
                continue
            except httpx.HTTPError as e:
                # It may have acted on it: the caller must not resend the same proof blindly.
                raise Unavailable(
                    f"the vault at {self.url} failed mid-request: {type(e).__name__}", code="vault_failed"
                ) from None
            if response.status_code in RETRY_STATUSES and attempt + 1 < self.retry.attempts:
                retry_after = response.headers.get("retry-after")
                await response.aclose()
                await asyncio.sleep(self.retry.delay(attempt, retry_after))
                continue
            return response
        reason = f": {type(last).__name__}" if last else ""
        # Never reached: a caller may resend (with a fresh nonce) once the vault is back.
        raise Unavailable(f"cannot reach the vault at {self.url}{reason}", code="vault_unreachable")

    @asynccontextmanager
    async def request(
        self, method: str, path: str, *, headers: Mapping[str, str], content: bytes = b""
    ) -> AsyncIterator[httpx.Response]:
        """The vault's streamed answer to one request (closed when the block ends)."""
        request = self._http.build_request(method, path, headers=dict(headers), content=content or None)
        response = await self._send(request)
        try:
            yield response
        finally:
            await response.aclose()

    async def reachable(self) -> bool:
        try:
            response = await self._http.get("/v1/sys/health", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code < 500
