"""The key release's fast path and the writer's hot path.

release_fastpath.py answers POST /v1/release before the app's middleware and route table: the
answers, the in-flight gate, the metrics, the log line and Retry-After must be what they were
through them, and a sealed vault must still answer through the sealed guard. hot_sql.py and the
per-transaction bookkeeping of devices.py (one licence UPDATE per group, one-statement replay
check) must decide exactly as before. In process (httpx.ASGITransport), SQLite.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from modelseal.service.logs import JsonLog
from modelseal.vault.server import http_common
from modelseal.vault.server.admission import ReleaseSettings
from modelseal.vault.server.app import create_app
from modelseal.vault.server.devices import DeviceStore
from modelseal.vault.server.group_commit import CommitQueueFull
from modelseal.vault.server.http_common import DENIED_BODY
from modelseal.vault.server.release_sql import ADD_LICENCE_DEVICE
from modelseal.vault.server.schema import Licence

from .release_helpers import LocalVault, build_request, local_vault, open_answer
from .test_group_commit import Vault, post_grouped


@dataclass
class Served:
    local: LocalVault
    app: Any
    log: io.StringIO
    psk: bytes

    def post(self, body: Any, *, path: str = "/v1/release", method: str = "POST") -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="https://vault.test") as client:
                if isinstance(body, bytes):
                    return await client.request(method, path, content=body)
                return await client.request(method, path, json=body)

        return asyncio.run(go())

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]

    def metric(self, text: str, line_start: str) -> float:
        for line in text.splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    local = local_vault(tmp_path)
    _, psk = local.devices.create_device(local.admin, "cam", [])
    local.devices.put_policy(local.admin, "p", "k", ["cam"], [])
    log = io.StringIO()
    app = create_app(local.store, metrics_public=True, log=JsonLog(log))
    try:
        yield Served(local, app, log, psk)
    finally:
        app.state.release_gate.close()
        local.store.engine.dispose()


def test_release_skips_the_middleware_but_is_counted_and_logged(served: Served) -> None:
    good = build_request("cam", served.psk, served.local.sealed)
    answer = served.post(good.body)
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    assert open_answer(good, "cam", served.local.sealed, answer.json()) == served.local.data_key
    wrong = build_request("cam", bytes(32), served.local.sealed)
    refused = served.post(wrong.body)
    assert refused.status_code == 403 and refused.content == DENIED_BODY
    # Neither went through the app's middleware: Starlette builds its stack on first use.
    assert served.app.middleware_stack is None

    metrics = served.post(b"", path="/v1/sys/metrics", method="GET").text
    route = 'route="/v1/release"'
    assert served.metric(metrics, f'modelseal_vault_releases_total{{outcome="granted",{route}}}') == 1
    assert served.metric(metrics, f'modelseal_vault_releases_total{{outcome="denied",{route}}}') == 1
    assert (
        served.metric(metrics, f'modelseal_vault_requests_total{{method="POST",{route},status="200"}}') == 1
    )

    lines = [line for line in served.log_lines() if line.get("route") == "/v1/release"]
    assert [(line["status"], line["level"], line["method"]) for line in lines] == [
        (200, "info", "POST"),
        (403, "warning", "POST"),
    ]
    assert all(set(line) == {"ts", "level", "event", "method", "route", "status", "ms"} for line in lines)
    text = served.log.getvalue()
    for secret in (served.psk.hex(), good.body["mac"], good.body["nonce"], answer.json()["sealed"]):
        assert secret not in text


def test_fast_path_answers_as_the_route_did(served: Served) -> None:
    unknown = build_request("nobody", served.psk, served.local.sealed)
    assert served.post(unknown.body).content == DENIED_BODY
    malformed = served.post({"device": "cam"})
    assert malformed.status_code == 400
    assert malformed.json()["error"] == {
        "code": "invalid_request",
        "message": "invalid request field: key_name",
    }
    assert served.post(b"{" * 5000).status_code == 413
    assert served.post(b"", method="GET").status_code == 405  # not taken: the route table answers


def test_every_503_and_429_of_the_fast_path_has_retry_after(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = served.app.state.release_gate

    async def broken(*_: Any) -> bytes:
        raise RuntimeError("storage gone")

    monkeypatch.setattr(gate, "release", broken)
    failed = served.post(build_request("cam", served.psk, served.local.sealed).body)
    assert failed.status_code == 503 and failed.headers["retry-after"] == "5"
    assert failed.json()["error"]["code"] == "release_failed"

    async def full(*_: Any) -> bytes:
        raise CommitQueueFull()

    monkeypatch.setattr(gate, "release", full)
    behind = served.post(build_request("cam", served.psk, served.local.sealed).body)
    assert behind.status_code == 503 and behind.headers["retry-after"] == "1"

    gate.inflight = gate.settings.max_inflight
    busy = served.post(build_request("cam", served.psk, served.local.sealed).body)
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    gate.inflight = 0


def test_a_sealed_vault_answers_release_through_the_sealed_guard(served: Served) -> None:
    served.local.store.barrier.seal()
    answer = served.post(build_request("cam", served.psk, served.local.sealed).body)
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    assert answer.json()["error"]["code"] == "sealed"
    assert served.app.middleware_stack is not None  # it went the app's way


def test_an_unexpected_error_is_a_500_counted_and_logged_as_error(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def crash(*_: Any) -> Any:
        raise RuntimeError("a bug")

    # Looked up per request by the device routes' body reader (http_common.device_body).
    monkeypatch.setattr(http_common, "read_bounded", crash)
    answer = served.post(build_request("cam", served.psk, served.local.sealed).body)
    # The documented error body, as every other route answers (before: Starlette's bare text).
    assert answer.status_code == 500 and answer.json()["error"]["code"] == "internal_error"
    assert "a bug" not in answer.text
    (line,) = [line for line in served.log_lines() if line.get("route") == "/v1/release"]
    assert (line["status"], line["level"]) == (500, "error")
    metrics = served.post(b"", path="/v1/sys/metrics", method="GET").text
    assert served.metric(metrics, 'modelseal_vault_releases_total{outcome="error",route="/v1/release"}') == 1


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Vault]:
    """Six devices, a licence of 4 uses; group commit in process."""
    local = local_vault(tmp_path)
    store, admin, devices = local.store, local.admin, local.devices
    psks = [(f"cam{i}", devices.create_device(admin, f"cam{i}", ["cams"])[1]) for i in range(6)]
    devices.put_policy(admin, "p", "k", [], ["cams"])
    devices.create_licence(admin, "l", "p", not_after=None, max_uses=4, max_devices=6)
    app = create_app(store, release_settings=ReleaseSettings(max_inflight=100, max_commit_queue=100))
    gate = app.state.release_gate
    try:
        yield Vault(store, admin, app, gate, local.sealed, psks, local.data_key)
    finally:
        gate.close()
        store.engine.dispose()


def test_licence_uses_inside_one_group_are_counted_and_capped(limited: Vault) -> None:
    requests = limited.requests(9)
    replay = dict(requests[3].body)  # the same nonce twice in one group: one of them at most
    answers = post_grouped(limited, [r.body for r in requests] + [replay])
    assert limited.committer.stats.largest_batch == 9  # all but the first in one transaction
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 4 and statuses.count(403) == 6
    assert statuses[:4] == [200] * 4  # arrival order decides who gets the last uses
    assert limited.uses() == 4
    outcomes = [r["outcome"] for r in limited.releases()]
    assert outcomes == ["released"] * 4 + ["licence_used_up"] * 5 + ["replay"]

    # Committed: a later transaction finds the licence used up.
    (late,) = post_grouped(limited, [limited.requests(1)[0].body])
    assert late.status_code == 403 and limited.uses() == 4


def test_a_driver_error_is_raised_as_sqlalchemys_without_the_parameters(limited: Vault) -> None:
    devices = DeviceStore(limited.store)
    with limited.store.write_session() as session:
        device = devices.releases.find_device(session, "default", "cam0")[1]
        licence = session.execute(select(Licence.id).where(Licence.name == "l")).scalar()
        assert device is not None and licence is not None
        params = {"licence_id": licence, "device_id": device.id, "mac": b"m" * 32}
        ADD_LICENCE_DEVICE.run(session, params)
        with pytest.raises(IntegrityError) as raised:  # the (licence, device) unique index
            ADD_LICENCE_DEVICE.run(session, params)
        session.rollback()
    assert "[SQL: INSERT" in str(raised.value) and "parameters" not in str(raised.value)
