"""How long and how many: the connection limits of the vault's and the agent's uvicorn servers.

uvicorn arms no timer on a new connection and cancels its keep-alive timer as soon as any byte of a
next request arrives, so a client that connects and sends half a request head holds its socket (a
file descriptor, a protocol object) for as long as it likes: 3,000 such TLS connections to the
vault, or 500 to the agent's socket, all stayed. Here every connection must deliver a whole request
head within ``HEAD_TIMEOUT`` seconds of connecting (and of its previous response); past it the
connection is closed. Idle keep-alive connections close after uvicorn's ``timeout_keep_alive``;
past ``MAX_CONNECTIONS`` open connections and running requests uvicorn answers 503; on SIGTERM the
server stops accepting, lets in-flight requests finish for at most ``GRACEFUL_SHUTDOWN`` seconds and
exits (systemd and Kubernetes wait 10 to 30 s before they kill).

Imported by the serve functions only: importing it loads uvicorn.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import ListenError

HEAD_TIMEOUT = 10.0
KEEP_ALIVE = 5
MAX_CONNECTIONS = 1000
GRACEFUL_SHUTDOWN = 5
# AEAD suites only for TLS 1.2 (TLS 1.3 has nothing else), as the nginx gateway's configuration.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class HeadDeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request head does not arrive in time."""

    head_timeout = HEAD_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self.cycle is not self._cycle_at_arm:
            self._disarm_head_deadline()  # a whole request head arrived

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()  # the next request's head has the same time

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        self._cycle_at_arm = self.cycle
        self._head_deadline: asyncio.TimerHandle | None = self.loop.call_later(
            self.head_timeout, self._head_too_slow
        )

    def _disarm_head_deadline(self) -> None:
        deadline = getattr(self, "_head_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        # abort, not close: a TLS close waits (up to 30 s) for the peer's close_notify, holding the
        # descriptor the deadline is there to free.
        self.transport.abort()


def peer_identity(transport: asyncio.BaseTransport) -> str | None:
    """Who is on the other end of a unix socket, as the kernel says (SO_PEERCRED): its uid and its
    pid namespace (a container), else its pid. None for TCP. A caller cannot choose it."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError:
        return None
    try:
        return f"uid{uid}.pidns{os.stat(f'/proc/{pid}/ns/pid').st_ino}"
    except OSError:
        return f"uid{uid}.pid{pid}"


class PeerCredentialsProtocol(HeadDeadlineProtocol):
    """On a unix socket, the request's client address is the peer's kernel identity (peer_identity),
    so per-caller limits cannot be dodged or exhausted under another caller's name."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = peer_identity(transport)
        if peer is not None:
            self.client = (peer, 0)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket, or one line saying why not (ListenError): before anything is served,
    so a port in use is not a stack of log lines and a misleading exit code."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as e:
        why = os.strerror(e.errno) if e.errno else str(e)
        raise ListenError(
            f"cannot listen on {host}:{port}: {why} (another process may hold it: pick another --listen)"
        ) from None


@dataclass(frozen=True)
class ConnectionLimits:
    """`--head-timeout`, `--keep-alive`, `--max-connections` of `vault serve` and `agent serve`."""

    head_timeout: float = HEAD_TIMEOUT
    keep_alive: int = KEEP_ALIVE
    max_connections: int = MAX_CONNECTIONS

    def __post_init__(self) -> None:
        if not (0 < self.head_timeout <= 3600 and 0 < self.keep_alive <= 3600 and self.max_connections >= 1):
            raise ValueError("connection limits must be positive (timeouts at most an hour)")

    def uvicorn_config(self, *, peer_credentials: bool = False) -> dict[str, Any]:
        """The uvicorn.Config keywords both servers pass (the agent with ``peer_credentials``)."""
        base = PeerCredentialsProtocol if peer_credentials else HeadDeadlineProtocol
        protocol = type("HeadDeadline", (base,), {"head_timeout": self.head_timeout})
        return {
            "http": protocol,
            "timeout_keep_alive": self.keep_alive,
            "limit_concurrency": self.max_connections,
            "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN,
        }
