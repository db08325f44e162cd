"""If the audit record of a release can't be written, nothing is released and nothing is counted.

The app runs in process (ASGI transport) so the store's audit can be made to fail on demand.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelseal.vault.server import datadir
from modelseal.vault.server.app import create_app
from modelseal.vault.server.store import Store

from .release_helpers import build_request, encodings, local_vault, open_answer


def post(app: Any, body: dict[str, Any]) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://vault.test") as client:
            return await client.post("/v1/release", json=body)

    return asyncio.run(go())


def test_failing_audit_write_releases_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = local_vault(tmp_path)
    store, admin, devices, sealed = local.store, local.admin, local.devices, local.sealed
    try:
        _, psk = devices.create_device(admin, "cam", [])
        devices.put_policy(admin, "p", "k", ["cam"], [])
        devices.create_licence(admin, "l", "p", not_after=None, max_uses=5, max_devices=None)
        app = create_app(store)
        request = build_request("cam", psk, sealed)

        real_audit = store.audit.record

        def failing_audit(session: Any, domain: str, op: str, actor: str, **details: Any) -> None:
            if op == "key.release":
                raise OSError("disk full")
            real_audit(session, domain, op, actor, **details)

        monkeypatch.setattr(store.audit, "record", failing_audit)
        answer = post(app, request.body)
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "release_failed"
        assert not any(form in answer.content for form in encodings(local.data_key))
        assert "sealed" not in answer.json()
        monkeypatch.setattr(store.audit, "record", real_audit)

        assert devices.read_licence(admin, "l")["uses"] == 0  # the counter rolled back too
        # ...and so did the nonce: the very same request now succeeds, once.
        answer = post(app, request.body)
        assert answer.status_code == 200
        assert open_answer(request, "cam", sealed, answer.json()) == local.data_key
        assert post(app, request.body).status_code == 403
        assert devices.read_licence(admin, "l")["uses"] == 1
        released = [
            r["event"]
            for r in store.audit_records(admin, limit=1000)
            if r["event"]["op"] == "key.release" and r["event"]["outcome"] == "released"
        ]
        assert len(released) == 1
        assert base64.b64encode(local.data_key).decode() not in repr(released)
    finally:
        store.engine.dispose()


def test_sealed_vault_and_oversized_body(tmp_path: Path) -> None:
    datadir.init(tmp_path / "v")
    store: Store = datadir.DataDir(tmp_path / "v").open_store()
    try:
        app = create_app(store)
        assert post(app, {"device": "x" * 5000}).status_code == 413
        assert post(app, {"device": "x"}).json()["error"]["message"] == "invalid request field: key_name"
        store.barrier.seal()
        answer = post(app, {"device": "x"})
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "sealed"
    finally:
        store.engine.dispose()
