"""POST /v1/lease and device-authenticated requests: the release's checks without its effects."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import ssl
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelseal.keyrelease import wire
from modelseal.vault.client import VaultClient
from modelseal.vault.errors import PermissionDenied
from modelseal.vault.server import datadir
from modelseal.vault.server.app import create_app

from .conftest import VaultServer
from .release_helpers import Sealed, build_request, device, opens, post, seal_model, unique

DENIED = b'{"error":{"code":"release_denied","message":"key release refused"}}'


def lease_body(name: str, key: str, version: int = 1, **extra: Any) -> bytes:
    return json.dumps(
        {"domain": "default", "device": name, "key_name": key, "key_version": version, **extra}
    ).encode()


def signed(psk: bytes, name: str, body: bytes, path: str = "/v1/lease") -> dict[str, str]:
    return wire.device_headers(psk, domain="default", device=name, method="POST", path=path, body=body)


def send(vault: VaultServer, body: bytes, headers: dict[str, str]) -> httpx.Response:
    context = ssl.create_default_context(cafile=str(vault.ca))
    return httpx.post(
        f"{vault.url}/v1/lease",
        content=body,
        headers={**headers, "Content-Type": "application/json"},
        verify=context,
        timeout=10,
    )


def lease(vault: VaultServer, name: str, psk: bytes, body: bytes) -> httpx.Response:
    return send(vault, body, signed(psk, name, body))


@dataclass
class Granted:
    sealed: Sealed
    name: str
    psk: bytes
    group: str
    licence: str

    def body(self) -> bytes:
        return lease_body(self.name, self.sealed.key_name, self.sealed.recipient.key_version)


def grant(vault: VaultServer, tmp_path: Path, key_name: str, **licence: Any) -> Granted:
    sealed = seal_model(vault, key_name, tmp_path)
    group = unique("g")
    name, psk = device(vault, [group])
    licence_name = unique("l")
    with vault.client() as admin:
        policy = unique("p")
        admin.put_policy(policy, key_name, groups=[group])
        if licence:
            admin.create_licence(licence_name, policy, **licence)
    return Granted(sealed, name, psk, group, licence_name)


def granted(vault: VaultServer, tmp_path: Path, key_name: str, **licence: Any) -> tuple[Sealed, str, bytes]:
    g = grant(vault, tmp_path, key_name, **licence)
    return g.sealed, g.name, g.psk


def test_device_request_input_byte_layout() -> None:
    nonce = bytes(range(16))
    got = wire.device_request_input(
        domain="default",
        device="cam",
        method="get",
        path="/v1/models/m/content",
        body=b"",
        timestamp=7,
        nonce=nonce,
    )

    def field(value: bytes) -> bytes:
        return struct.pack(">I", len(value)) + value

    expected = (
        b"modelseal vault device request v1\x00"
        + field(b"default")
        + field(b"cam")
        + field(b"GET")
        + field(b"/v1/models/m/content")
        + field(hashlib.sha256(b"").digest())
        + field(struct.pack(">Q", 7))
        + field(nonce)
    )
    assert got == expected
    headers = wire.device_headers(
        bytes(32), domain="d", device="c", method="POST", path="/v1/lease", body=b"{}"
    )
    assert [h.lower() for h in headers] == list(wire.DEVICE_HEADERS)
    assert abs(int(headers["X-Modelseal-Timestamp"]) - time.time()) < 5
    nonce = base64.b64decode(headers["X-Modelseal-Nonce"])
    message = wire.device_request_input(
        domain="d", device="c", method="POST", path="/v1/lease", body=b"{}",
        timestamp=int(headers["X-Modelseal-Timestamp"]), nonce=nonce,
    )  # fmt: skip
    assert base64.b64decode(headers["X-Modelseal-Mac"]) == wire.mac(bytes(32), message)
    # The MAC covers the body: the same headers can't vouch for another one.
    other = wire.device_request_input(
        domain="d", device="c", method="POST", path="/v1/lease", body=b"{ }",
        timestamp=int(headers["X-Modelseal-Timestamp"]), nonce=nonce,
    )  # fmt: skip
    assert other != message


def test_lease_valid_then_revoked(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    deadline = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    sealed, name, psk = granted(vault, tmp_path, key_name, not_after=deadline.isoformat())
    version = sealed.recipient.key_version
    answer = lease(vault, name, psk, lease_body(name, key_name, version))
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    assert answer.json() == {
        "valid": True,
        "key_name": key_name,
        "key_version": version,
        "not_after": deadline.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "recheck_after": 300,
    }
    # Through the client, with the exact bytes that were MAC'd.
    body = lease_body(name, key_name, version)
    with VaultClient(vault.url, ca=vault.ca) as client:
        assert client.lease(body, signed(psk, name, body))["valid"] is True

    with vault.client() as admin:
        admin.revoke_device(name)
    refused = lease(vault, name, psk, lease_body(name, key_name, version))
    assert refused.status_code == 403 and refused.content == DENIED
    # Byte for byte what a refused release answers.
    release_refusal = post(vault, build_request(name, psk, sealed).body)
    assert (release_refusal.status_code, release_refusal.content) == (403, refused.content)
    assert release_refusal.headers["content-type"] == refused.headers["content-type"]
    with VaultClient(vault.url, ca=vault.ca) as client, pytest.raises(PermissionDenied) as e:
        client.lease(body, signed(psk, name, body))
    assert e.value.code == "release_denied"

    with vault.client() as admin:
        records = [r["event"] for r in admin.audit(limit=1000) if r["event"]["op"] == "lease.check"]
    mine = [r for r in records if r.get("device") == name]
    assert [r["outcome"] for r in mine] == ["valid", "valid", "revoked", "revoked"]
    assert mine[0]["policy"] and mine[0]["key"] == key_name and mine[0]["path"] == "/v1/lease"
    text = json.dumps(mine)
    assert psk.hex() not in text and "X-Modelseal" not in text


def test_expired_licence_and_other_refusals_look_alike(
    vault: VaultServer, key_name: str, tmp_path: Path
) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    sealed, expired, expired_psk = granted(vault, tmp_path, key_name, not_after=past)
    version = sealed.recipient.key_version
    outsider, outsider_psk = device(vault)  # no policy at all
    good_sealed, good, good_psk = granted(vault, tmp_path, f"{key_name}-b")
    good_body = lease_body(good, f"{key_name}-b", good_sealed.recipient.key_version)

    answers = {
        "expired": lease(vault, expired, expired_psk, lease_body(expired, key_name, version)),
        "no policy": lease(vault, outsider, outsider_psk, lease_body(outsider, key_name, version)),
        "unknown device": lease(vault, "nobody-here", good_psk, lease_body("nobody-here", key_name, version)),
        "wrong psk": lease(vault, good, outsider_psk, good_body),
        "unknown version": lease(vault, good, good_psk, lease_body(good, f"{key_name}-b", 99)),
        "unknown key": lease(vault, good, good_psk, lease_body(good, f"{key_name}-none", 1)),
        # headers made for one body, sent with another
        "other body": send(vault, good_body, signed(good_psk, good, lease_body(good, key_name, version))),
        "other path": send(vault, good_body, signed(good_psk, good, good_body, path="/v1/release")),
    }
    stale = signed(good_psk, good, good_body)
    stamp = int(stale["X-Modelseal-Timestamp"]) - wire.MAX_SKEW_SECONDS - 30
    nonce = base64.b64decode(stale["X-Modelseal-Nonce"])
    mac = wire.mac(
        good_psk,
        wire.device_request_input(
            domain="default",
            device=good,
            method="POST",
            path="/v1/lease",
            body=good_body,
            timestamp=stamp,
            nonce=nonce,
        ),
    )
    stale.update({"X-Modelseal-Timestamp": str(stamp), "X-Modelseal-Mac": base64.b64encode(mac).decode()})
    answers["stale"] = send(vault, good_body, stale)
    for what, answer in answers.items():
        assert (answer.status_code, answer.content) == (403, DENIED), what
    assert lease(vault, good, good_psk, good_body).status_code == 200  # the good device still passes


def test_replayed_headers_refused(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    sealed, name, psk = granted(vault, tmp_path, key_name)
    body = lease_body(name, key_name, sealed.recipient.key_version)
    headers = signed(psk, name, body)
    assert send(vault, body, headers).status_code == 200
    again = send(vault, body, headers)
    assert (again.status_code, again.content) == (403, DENIED)
    with vault.client() as admin:
        outcomes = [
            r["event"]["outcome"]
            for r in admin.audit(limit=1000)
            if r["event"]["op"] == "lease.check" and r["event"].get("device") == name
        ]
    assert outcomes == ["valid", "replay"]


def test_lease_does_not_consume_uses(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    g = grant(vault, tmp_path, key_name, max_uses=1, max_devices=1)
    for _ in range(3):
        assert lease(vault, g.name, g.psk, g.body()).status_code == 200
    with vault.client() as admin:
        assert admin.read_licence(g.licence)["uses"] == 0
        assert admin.read_licence(g.licence)["devices"] == 0
    assert opens(vault, g.sealed, g.name, g.psk)  # the one release the licence allows
    with vault.client() as admin:
        assert admin.read_licence(g.licence)["uses"] == 1
    # max_uses limits releases: the key already released stays leased...
    assert lease(vault, g.name, g.psk, g.body()).status_code == 200
    # ...but max_devices keeps a second device of the same group out.
    other, other_psk = device(vault, [g.group])
    version = g.sealed.recipient.key_version
    answer = lease(vault, other, other_psk, lease_body(other, key_name, version))
    assert (answer.status_code, answer.content) == (403, DENIED)
    with vault.client() as admin:
        assert admin.read_licence(g.licence)["uses"] == 1
        outcome = [
            r["event"]["outcome"]
            for r in admin.audit(limit=1000)
            if r["event"]["op"] == "lease.check" and r["event"].get("device") == other
        ]
    assert outcome == ["licence_device_limit"]


def test_failed_proofs_lock_the_device(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    sealed, name, psk = granted(vault, tmp_path, key_name)
    wrong = bytes(32)

    def body_of() -> bytes:
        return lease_body(name, key_name, sealed.recipient.key_version)

    for _ in range(5):
        assert lease(vault, name, wrong, body_of()).status_code == 403
    locked = lease(vault, name, psk, body_of())
    assert (locked.status_code, locked.content) == (403, DENIED)
    with vault.client() as admin:
        assert admin.read_device(name)["locked"] is True
        admin.unlock_device(name)
    assert lease(vault, name, psk, body_of()).status_code == 200


def test_malformed_requests(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    sealed, name, psk = granted(vault, tmp_path, key_name)
    body = lease_body(name, key_name, sealed.recipient.key_version)
    headers = signed(psk, name, body)
    for missing in wire.DEVICE_HEADERS:
        partial = {k: v for k, v in headers.items() if k.lower() != missing}
        answer = send(vault, body, partial)
        assert answer.status_code == 400 and missing in answer.json()["error"]["message"]
    bad_nonce = {**headers, "X-Modelseal-Nonce": base64.b64encode(b"short").decode()}
    assert send(vault, body, bad_nonce).status_code == 400
    assert send(vault, body, {**headers, "X-Modelseal-Timestamp": "-5"}).status_code == 400
    other = lease_body("someone-else", key_name, 1)
    answer = send(vault, other, signed(psk, name, other))
    assert answer.status_code == 400 and "device" in answer.json()["error"]["message"]
    both = lease_body(name, key_name, 1, model="m")
    assert send(vault, both, signed(psk, name, both)).status_code == 400
    big = json.dumps({"device": name, "pad": "x" * 5000}).encode()
    assert send(vault, big, signed(psk, name, big)).status_code == 413
    # None of those consumed anything: the proper request still passes.
    assert send(vault, body, signed(psk, name, body)).status_code == 200


def test_sealed_vault_answers_503(tmp_path: Path) -> None:
    datadir.init(tmp_path / "v")
    store = datadir.DataDir(tmp_path / "v").open_store()
    try:
        app = create_app(store, models_dir=str(tmp_path / "models"))
        store.barrier.seal()
        body = lease_body("cam", "k")

        async def go() -> list[httpx.Response]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="https://vault.test") as client:
                return [
                    await client.post("/v1/lease", content=body, headers=signed(bytes(32), "cam", body)),
                    await client.get("/v1/models/m/content"),
                ]

        for answer in asyncio.run(go()):
            assert answer.status_code == 503 and answer.json()["error"]["code"] == "sealed"
    finally:
        store.engine.dispose()
