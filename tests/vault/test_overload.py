"""Over capacity the vault answers 429 / 503 with Retry-After at once and keeps running.

A real `vault serve` (TLS, SQLite) with small limits and a 100 ms commit window (the writer waits
that long before each group, so releases pile up in flight as they would behind a slow disk), then
a flood from many connections at once. In process: a 429 is answered before any database work.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelseal.vault.server import datadir
from modelseal.vault.server.admission import ReleaseSettings
from modelseal.vault.server.app import create_app

from .conftest import VaultServer, _free_port, stop_server
from .release_helpers import build_request, device, local_vault, open_answer, seal_model

FLOOD = 120
LIMITS = ["--max-inflight", "16", "--max-commit-queue", "6", "--commit-window", "100"]


@pytest.fixture
def small_vault(tmp_path: Path) -> Iterator[VaultServer]:
    """`vault serve` with LIMITS; always stopped."""
    data = tmp_path / "vault"
    datadir.init(data)
    log = tmp_path / "server.log"
    port = _free_port()
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "modelseal", "vault", "serve"),
                *("--data", str(data), "--listen", f"127.0.0.1:{port}", *LIMITS),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = VaultServer(f"https://127.0.0.1:{port}", data, log, process)
    try:
        context = ssl.create_default_context(cafile=str(server.ca))
        deadline = time.monotonic() + 20
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{server.url}/v1/sys/health", verify=context, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"the vault did not start: {log.read_text()[-2000:]}")
        yield server
    finally:
        stop_server(server)


def flood(server: VaultServer, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """Every body at once, each on its own TLS connection."""
    context = ssl.create_default_context(cafile=str(server.ca))

    async def one(body: dict[str, Any]) -> httpx.Response:
        async with httpx.AsyncClient(verify=context, timeout=60) as client:
            return await client.post(f"{server.url}/v1/release", json=body)

    async def go() -> list[httpx.Response]:
        return list(await asyncio.gather(*(one(b) for b in bodies)))

    return asyncio.run(go())


def released_records(server: VaultServer) -> list[dict[str, Any]]:
    with server.client() as admin:
        records: list[dict[str, Any]] = []
        after = 0
        while batch := admin.audit(after=after, limit=1000):
            records.extend(r["event"] for r in batch)
            after = batch[-1]["seq"]
    return [r for r in records if r["op"] == "key.release"]


def test_flood_gets_429_and_503_with_retry_after_and_the_vault_keeps_serving(
    small_vault: VaultServer, tmp_path: Path
) -> None:
    sealed = seal_model(small_vault, "k-overload", tmp_path)
    names = [device(small_vault, ["flood"]) for _ in range(4)]
    with small_vault.client() as admin:
        admin.put_policy("flood", "k-overload", groups=["flood"])
    requests = [build_request(*names[i % 4], sealed) for i in range(FLOOD)]

    answers = flood(small_vault, [r.body for r in requests])
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 429, 503}, statuses  # never a 500, never a refusal
    assert statuses.count(429) > 0 and statuses.count(503) > 0 and statuses.count(200) > 0
    for answer in answers:
        if answer.status_code in (429, 503):
            assert int(answer.headers["retry-after"]) >= 1
            code = answer.json()["error"]["code"]
            assert code == ("too_many_requests" if answer.status_code == 429 else "commit_queue_full")
    for request, answer in zip(requests, answers, strict=True):
        if answer.status_code == 200:
            name = request.body["device"]
            assert open_answer(request, name, sealed, answer.json()) == sealed.recipient.data_key

    # Still serving: health, and the refused requests themselves (their nonces were never used).
    context = ssl.create_default_context(cafile=str(small_vault.ca))
    assert httpx.get(f"{small_vault.url}/v1/sys/health", verify=context).status_code == 200
    refused = [r for r, a in zip(requests, answers, strict=True) if a.status_code != 200]
    for request in refused[:5]:
        again = httpx.post(f"{small_vault.url}/v1/release", json=request.body, verify=context, timeout=30)
        assert again.status_code == 200
        assert open_answer(request, request.body["device"], sealed, again.json()) == sealed.recipient.data_key

    # Every 200 has its record and nothing else was released; the chain holds.
    records = released_records(small_vault)
    assert [r["outcome"] for r in records] == ["released"] * (statuses.count(200) + 5)
    with small_vault.client() as admin:
        assert admin.verify_audit()["records"] >= len(records)
    assert small_vault.process.poll() is None


def test_429_comes_before_any_database_work(tmp_path: Path) -> None:
    local = local_vault(tmp_path)
    store, admin, devices, sealed = local.store, local.admin, local.devices, local.sealed
    try:
        _, psk = devices.create_device(admin, "cam", [])
        devices.put_policy(admin, "p", "k", ["cam"], [])
        app = create_app(store, release_settings=ReleaseSettings(max_inflight=2))
        gate = app.state.release_gate
        request = build_request("cam", psk, sealed)
        before = len(store.audit_records(admin, limit=1000))

        async def post() -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="https://vault.test") as client:
                return await client.post("/v1/release", json=request.body)

        gate.inflight = 2  # two releases in flight already
        answer = asyncio.run(post())
        assert answer.status_code == 429 and answer.headers["retry-after"] == "1"
        assert answer.json()["error"]["code"] == "too_many_requests"
        assert gate.refused_busy == 1 and gate.inflight == 2
        assert len(store.audit_records(admin, limit=1000)) == before  # no record, no nonce

        gate.inflight = 0
        answer = asyncio.run(post())
        assert answer.status_code == 200 and gate.inflight == 0
        assert open_answer(request, "cam", sealed, answer.json()) == local.data_key
        gate.close()
    finally:
        store.engine.dispose()
