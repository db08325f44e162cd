"""An edge agent for the tests: `modelseal agent serve` in a subprocess, or in-process with a tap.

The tapped agent records every byte it sends to and receives from the vault, so a test can show
that nothing it forwards holds a file key.
"""

from __future__ import annotations

import contextlib
import io
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn

from modelseal import agent as agent_pkg
from modelseal.agent import Agent, JsonLog, ModelCache, RateLimiter, Upstream, create_app

from .conftest import VaultServer


@dataclass
class AgentProcess:
    socket: Path
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"unix:{self.socket}"


def _wait_for_socket(path: Path, alive: object, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if path.is_socket():
            with contextlib.suppress(httpx.HTTPError):
                transport = httpx.HTTPTransport(uds=str(path))
                with httpx.Client(transport=transport, base_url="http://agent") as c:
                    if c.get("/v1/agent/health").status_code == 200:
                        return True
        if callable(alive) and not alive():
            return False
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def agent_process(vault_url: str, ca: Path, folder: Path, *extra: str) -> Iterator[AgentProcess]:
    folder.mkdir(parents=True, exist_ok=True)
    sock, log = folder / "agent.sock", folder / "agent.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelseal",
                "agent",
                "serve",
                "--vault",
                vault_url,
                "--ca",
                str(ca),
                "--listen",
                f"unix:{sock}",
                "--cache",
                str(folder / "cache"),
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        if not _wait_for_socket(sock, lambda: process.poll() is None, time.monotonic() + 20):
            raise RuntimeError(f"the agent did not start: {log.read_text()[-2000:]}")
        yield AgentProcess(sock, log, process)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class Tap(httpx.AsyncBaseTransport):
    """Passes requests to the real transport and keeps a copy of every byte in both directions."""

    inner: httpx.AsyncBaseTransport
    sent: list[bytes] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        headers = b"\n".join(k + b": " + v for k, v in request.headers.raw)
        self.sent.append(str(request.url).encode() + b"\n" + headers + b"\n" + body)
        response = await self.inner.handle_async_request(request)
        content = await response.aread()
        self.received.append(b"\n".join(k + b": " + v for k, v in response.headers.raw) + b"\n" + content)
        return httpx.Response(response.status_code, headers=response.headers, content=content)

    def everything(self) -> bytes:
        return b"\n".join(self.sent + self.received)


@dataclass
class TappedAgent:
    address: str
    tap: Tap
    log: io.StringIO


@contextlib.contextmanager
def tapped_agent(vault: VaultServer, folder: Path) -> Iterator[TappedAgent]:
    folder.mkdir(parents=True, exist_ok=True)
    context = ssl.create_default_context(cafile=str(vault.ca))
    tap = Tap(httpx.AsyncHTTPTransport(verify=context))
    log = io.StringIO()
    upstream = Upstream(vault.url, ca=vault.ca, transport=tap)
    agent = Agent(upstream, ModelCache(folder / "cache"), RateLimiter(100, 200, 1000), JsonLog(log))
    server = uvicorn.Server(uvicorn.Config(create_app(agent), log_level="warning", lifespan="on"))
    path = folder / "tapped.sock"
    sock = agent_pkg._unix_socket(str(path), 0o600)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        if not _wait_for_socket(path, thread.is_alive, time.monotonic() + 20):
            raise RuntimeError("the in-process agent did not start")
        yield TappedAgent(f"unix:{path}", tap, log)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
