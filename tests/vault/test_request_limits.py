"""An anonymous client cannot make the vault read a large body: no token, no body read (401 first);
every body bounded (413). Measured on a real `vault serve`: its RSS before and after 40 MiB bodies
sent without a token, with a token, declared and chunked (before this, a 400 MB body with no token
grew the vault from 122 MB to 942 MB and it kept it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelseal.vault.server.request_limits import MAX_BODY

from .conftest import VaultServer, tls_context

pytestmark = pytest.mark.faults

BIG = 40 << 20


def rss_kib(server: VaultServer) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    block = b"x" * size
    for _ in range(total // size):
        yield block


def post(server: VaultServer, content: bytes | Iterator[bytes], token: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    return httpx.post(
        f"{server.url}/v1/keys/big", content=content, headers=headers, verify=tls_context(server), timeout=60
    )


def test_large_bodies_are_refused_before_they_are_read(vault: VaultServer) -> None:
    token = vault.admin_token_file.read_text().strip()
    post(vault, b"{}", token)  # warm: the first requests allocate what any request needs
    before = rss_kib(vault)
    for content, auth, status in (
        (b"x" * BIG, None, 401),  # declared length, no token
        (chunks(BIG), None, 401),  # chunked, no token
        (b"x" * BIG, token, 413),  # declared length over the bound, a valid token
        (chunks(BIG), token, 413),  # chunked: cut off once past the bound
    ):
        try:
            answer = post(vault, content, auth)
        except httpx.HTTPError:
            continue  # the vault may close the connection while the client is still sending
        assert answer.status_code == status, answer.text
        assert answer.json()["error"]["code"] == ("unauthenticated" if status == 401 else "too_large")
    grown = rss_kib(vault) - before
    print(f"vault RSS before {before} KiB, after 4 x 40 MiB bodies: +{grown} KiB")
    assert grown < 8 << 10, f"the vault grew {grown} KiB"
    assert vault.process.poll() is None


def test_a_body_within_the_bound_still_reaches_its_route(vault: VaultServer) -> None:
    token = vault.admin_token_file.read_text().strip()
    answer = post(vault, b'{"type": "aes256-gcm"' + b" " * (MAX_BODY - 100) + b"}", token)
    assert answer.status_code in (200, 409), answer.text  # created (or already there)


@pytest.mark.parametrize("path", ["/v1/sys/health", "/v1/sys/ready"])
def test_tokenless_routes_need_no_token(vault: VaultServer, path: str) -> None:
    assert httpx.get(f"{vault.url}{path}", verify=tls_context(vault), timeout=10).status_code == 200
