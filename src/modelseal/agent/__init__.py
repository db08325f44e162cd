"""The edge agent: forwards inference containers' requests to the vault, unable to read them.

``modelseal agent serve --vault URL --listen unix:PATH`` runs it. Containers point their device
identity at the agent (``--agent unix:PATH --psk-file PSK``) and talk the vault's own protocol
through it: key releases (HPKE-sealed to the container's ephemeral key), lease checks and model
downloads (MAC'd with the container's PSK, which the agent never holds). See docs/agent.md.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ListenError, UsageError
from ..service.logs import JsonLog
from .app import Agent, create_app
from .cache import ModelCache

if TYPE_CHECKING:
    from ..service.connections import ConnectionLimits
from .limits import RateLimiter, RefusalBudget
from .upstream import RetryPolicy, Upstream

UNIX_PREFIX = "unix:"


@dataclass
class AgentConfig:
    vault: str
    listen: str
    cache_dir: Path
    ca: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    rate: float = 20.0
    burst: int = 40
    total_rate: float = 500.0
    socket_mode: int = 0o660
    limits: ConnectionLimits | None = None  # head deadline, keep-alive, connection cap


DEFAULT_SOCKET_DIR = "/run/modelseal"  # docs: --listen unix:/run/modelseal/agent.sock


def parse_listen(text: str) -> tuple[str, int] | str:
    """``unix:PATH`` -> PATH, ``HOST:PORT`` -> (HOST, PORT)."""
    if text.startswith(UNIX_PREFIX):
        path = text[len(UNIX_PREFIX) :]
        if not path:
            raise UsageError("--listen unix: needs a socket path, e.g. unix:/run/modelseal/agent.sock")
        return path
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen takes unix:PATH or HOST:PORT, not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _unix_socket(path: str, mode: int) -> socket.socket:
    target = Path(path)
    if target.is_socket():
        # A socket left by a crashed agent: reuse the path only if nobody answers on it.
        with socket.socket(socket.AF_UNIX) as probe, contextlib.suppress(OSError):
            probe.connect(path)
            raise UsageError(f"an agent is already listening on {path}")
        target.unlink()
    elif target.exists():
        raise UsageError(f"{path} exists and is not a socket")
    if not target.parent.is_dir():
        if str(target.parent) != DEFAULT_SOCKET_DIR:
            raise ListenError(f"cannot listen on unix:{path}: the folder {target.parent} does not exist")
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)  # the documented default
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bind under a umask so the socket is never, even briefly, more open than asked.
    previous = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    except OSError as e:
        sock.close()
        raise ListenError(f"cannot listen on unix:{path}: {e.strerror or e}") from None
    finally:
        os.umask(previous)
    os.chmod(path, mode)
    sock.listen(128)
    return sock


def build_agent(config: AgentConfig, *, log: JsonLog | None = None) -> Agent:
    upstream = Upstream(
        config.vault,
        ca=config.ca,
        client_cert=config.client_cert,
        client_key=config.client_key,
        retry=RetryPolicy(),
    )
    limiter = RateLimiter(config.rate, config.burst, config.total_rate)
    return Agent(upstream, ModelCache(config.cache_dir), limiter, log, refusals=RefusalBudget())


def serve(config: AgentConfig) -> None:
    """Serve until SIGTERM/SIGINT (uvicorn's handling), then remove the unix socket."""
    import uvicorn

    where = parse_listen(config.listen)
    log = JsonLog()
    agent = build_agent(config, log=log)
    app = create_app(agent)
    from ..service.connections import ConnectionLimits

    limits = config.limits or ConnectionLimits()
    settings = limits.uvicorn_config(peer_credentials=True)
    uv = uvicorn.Config(
        app, server_header=False, access_log=False, log_level="warning", lifespan="on", **settings
    )
    server = uvicorn.Server(uv)
    if isinstance(where, str):
        sock = _unix_socket(where, config.socket_mode)
        log.event("listening", address=f"unix:{where}", vault=config.vault)
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(where)
    else:
        host, port = where
        from ..service.connections import listen

        sock = listen(host, port)
        log.event("listening", address=f"{host}:{port}", vault=config.vault)
        with sock:
            server.run(sockets=[sock])


__all__ = [
    "Agent",
    "AgentConfig",
    "JsonLog",
    "ModelCache",
    "RateLimiter",
    "RetryPolicy",
    "Upstream",
    "build_agent",
    "create_app",
    "parse_listen",
    "serve",
]
