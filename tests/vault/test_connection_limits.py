"""No anonymous client holds the vault's connections: a request head must arrive in time, idle
connections close, SIGTERM stops it in seconds, TLS 1.2 offers AEAD suites only, and no page loads
a third-party script. A real `vault serve`, half-sent requests over real TLS.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import VaultServer, start_server, stop_server, tls_context

pytestmark = pytest.mark.faults

HEAD_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    server = start_server(
        tmp_path_factory.mktemp("strict"), flags=("--head-timeout", str(HEAD_TIMEOUT), "--keep-alive", "1")
    )
    try:
        yield server
    finally:
        stop_server(server)


def fds(server: VaultServer) -> int:
    return len(os.listdir(f"/proc/{server.process.pid}/fd"))


def half_sent(server: VaultServer) -> ssl.SSLSocket:
    port = int(server.url.rsplit(":", 1)[1])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = tls_context(server).wrap_socket(raw, server_hostname="127.0.0.1")
    conn.sendall(b"GET /v1/sys/health HTTP/1.1\r\nHost: vault\r\nX-Slow: ")  # and never the rest
    return conn


def closed_by_peer(conn: ssl.SSLSocket) -> bool:
    try:
        return conn.recv(1) == b""
    except (ssl.SSLError, OSError):
        return True


def test_half_sent_request_heads_are_closed_after_the_deadline(strict: VaultServer) -> None:
    before = fds(strict)
    held = [half_sent(strict) for _ in range(100)]
    peak = fds(strict)
    time.sleep(HEAD_TIMEOUT + 1.5)
    after = fds(strict)
    try:
        assert all(closed_by_peer(c) for c in held)
    finally:
        for c in held:
            c.close()
    print(f"vault fds: {before} idle, {peak} with 100 half-sent heads, {after} {HEAD_TIMEOUT + 1.5} s later")
    assert peak >= before + 90 and after <= before + 2
    # A well-behaved request is unaffected.
    assert httpx.get(f"{strict.url}/v1/sys/health", verify=tls_context(strict), timeout=10).status_code == 200


def test_tls12_offers_aead_suites_only(strict: VaultServer) -> None:
    port = int(strict.url.rsplit(":", 1)[1])
    for ciphers, accepted in (("ECDHE+AESGCM", True), ("AES128-SHA:AES256-SHA:ECDHE+AES+SHA", False)):
        context = tls_context(strict)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(ciphers)
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
            ):
                suite = conn.cipher()
            handshake = True
        except ssl.SSLError:
            handshake, suite = False, None
        assert handshake is accepted, (ciphers, suite)


def test_no_swagger_page(strict: VaultServer) -> None:
    token = strict.admin_token_file.read_text().strip()
    answer = httpx.get(
        f"{strict.url}/v1/docs",
        headers={"Authorization": f"Bearer {token}"},
        verify=tls_context(strict),
        timeout=10,
    )
    assert answer.status_code == 404


def test_sigterm_stops_the_vault_in_seconds_with_an_idle_client(tmp_path: Path) -> None:
    server = start_server(tmp_path, flags=("--keep-alive", "60"))
    try:
        with httpx.Client(verify=tls_context(server), timeout=10) as client:
            assert client.get(f"{server.url}/v1/sys/health").status_code == 200  # kept alive
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            server.process.wait(30)
            took = time.monotonic() - started
        print(f"vault stopped {took:.2f} s after SIGTERM with an idle keep-alive client")
        assert took < 8
    finally:
        stop_server(server)
