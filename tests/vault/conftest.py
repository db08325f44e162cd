"""A real vault for the tests: `modelseal vault serve` in a subprocess, TLS on a free loopback port.

The server is always stopped (terminate, then kill) and its log is kept for the secret scan.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

for _module in ("fastapi", "uvicorn", "sqlalchemy", "alembic", "httpx"):
    pytest.importorskip(_module, reason=f"{_module} not installed (extra: vault)")

import httpx  # noqa: E402

from modelseal.vault.client import VaultClient  # noqa: E402
from modelseal.vault.server import datadir  # noqa: E402
from modelseal.vault.server.engine import sqlite_url  # noqa: E402

from .postgres import PostgresServer, PostgresUnavailable, requirements, running_postgres  # noqa: E402


@dataclass
class VaultServer:
    url: str
    data: Path
    log: Path
    process: subprocess.Popen[bytes]
    database_url: str | None = None  # None: SQLite in the data folder

    @property
    def ca(self) -> Path:
        return self.data / "tls" / "ca.pem"

    @property
    def admin_token_file(self) -> Path:
        return self.data / datadir.TOKEN_FILE

    def client(self, token_file: Path | None = None) -> VaultClient:
        from modelseal.vault.client import read_token_file

        token = read_token_file(token_file or self.admin_token_file)
        return VaultClient(self.url, token, ca=self.ca)

    def token_file(self, role: str, folder: Path) -> Path:
        with self.client() as admin:
            token = str(admin.create_token(role, f"test {role}")["token"])
        path = folder / f"{role}-{uuid.uuid4().hex[:8]}.token"
        path.write_text(token + "\n")
        path.chmod(0o600)
        return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    folder: Path, database_url: str | None = None, flags: tuple[str, ...] = ()
) -> VaultServer:
    data = folder / "vault"
    datadir.init(data, database_url=database_url)
    return serve_process(data, folder / "server.log", database_url, flags)


def tls_context(server: VaultServer, client_cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(server.ca))
    if client_cert is not None:
        context.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
    return context


def serve_process(
    data: Path,
    log: Path,
    database_url: str | None = None,
    flags: tuple[str, ...] = (),
    client_cert: tuple[Path, Path] | None = None,
    port: int | None = None,
) -> VaultServer:
    """`vault serve` on an existing data folder (several may serve one PostgreSQL database).

    ``flags`` are extra `vault serve` options; the health probe presents ``client_cert`` when the
    vault requires one; ``port`` serves on that port (a restart where clients expect it).
    """
    database = ["--database", database_url] if database_url else []
    fixed = port
    for _ in range(3):  # the free port may be taken between probe and bind
        port = fixed or _free_port()
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "modelseal",
                    "vault",
                    "serve",
                    "--data",
                    str(data),
                    "--listen",
                    f"127.0.0.1:{port}",
                    *database,
                    *flags,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        server = VaultServer(f"https://127.0.0.1:{port}", data, log, process, database_url)
        context = tls_context(server, client_cert)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{server.url}/v1/sys/health", verify=context, timeout=1).status_code == 200:
                    return server
            except httpx.HTTPError:
                time.sleep(0.1)
        stop_server(server)
    raise RuntimeError(f"the vault did not start: {log.read_text()[-2000:]}")


def stop_server(server: VaultServer) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="session")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    server = start_server(tmp_path_factory.mktemp("vault"))
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def make_vault(tmp_path: Path) -> Iterator[Callable[[], VaultServer]]:
    """A private vault for tests that change its state for good (sealing it)."""
    started: list[VaultServer] = []

    def make() -> VaultServer:
        server = start_server(tmp_path / f"v{len(started)}")
        started.append(server)
        return server

    try:
        yield make
    finally:
        for server in started:
            stop_server(server)


@pytest.fixture
def key_name() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL on loopback for the session; skips where it can't run (never in CI)."""
    try:
        requirements()
    except PostgresUnavailable as e:
        pytest.skip(f"PostgreSQL: {e}")
    with running_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The storage conformance axis: a fresh, empty database on each backend."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.create_database()
    try:
        yield url
    finally:
        server.drop_database(url)
