"""The model repository over the real TLS server: upload, list, download by token and by device."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import modelseal
from modelseal.cli.main import main
from modelseal.keyrelease import wire
from modelseal.vault.client import VaultClient
from modelseal.vault.errors import KeyServiceError, PermissionDenied
from modelseal.vault.server import datadir
from modelseal.vault.server.app import create_app

from .conftest import VaultServer
from .release_helpers import Sealed, device, seal_model, unique

DENIED = b'{"error":{"code":"release_denied","message":"key release refused"}}'


def content_path(model_id: str) -> str:
    return f"/v1/models/{model_id}/content"


def device_get(
    vault: VaultServer, path: str, name: str, psk: bytes, extra: dict[str, str] | None = None
) -> httpx.Response:
    headers = wire.device_headers(psk, domain="default", device=name, method="GET", path=path)
    context = ssl.create_default_context(cafile=str(vault.ca))
    return httpx.get(f"{vault.url}{path}", headers={**headers, **(extra or {})}, verify=context, timeout=30)


def uploaded(vault: VaultServer, key_name: str, folder: Path, size: int = 20_000) -> tuple[Sealed, str]:
    sealed = seal_model(vault, key_name, folder, size)
    model_id = unique("model")
    with vault.client() as admin:
        admin.upload_model(model_id, sealed.path)
    return sealed, model_id


def entitled(vault: VaultServer, key_name: str) -> tuple[str, bytes]:
    group = unique("g")
    name, psk = device(vault, [group])
    with vault.client() as admin:
        admin.put_policy(unique("p"), key_name, groups=[group])
    return name, psk


def test_upload_list_show_and_download_by_token(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    sealed = seal_model(vault, key_name, tmp_path)
    model_id = unique("model")
    digest = hashlib.sha256(sealed.path.read_bytes()).hexdigest()
    key_ref = f"{key_name}:{sealed.recipient.key_version}"
    with vault.client() as admin:
        meta = admin.upload_model(model_id, sealed.path)
        assert meta["id"] == model_id and meta["sha256"] == digest and meta["keys"] == [key_ref]
        assert meta["size"] == sealed.path.stat().st_size
        listed = {m["id"]: m for m in admin.list_models()}
        assert set(listed[model_id]) == {"id", "size", "sha256", "keys", "created"}
        assert listed[model_id]["sha256"] == digest
        assert admin.model_info(model_id)["keys"] == [key_ref]

        out = tmp_path / "out" / "copy.mseal"
        out.parent.mkdir()
        got = admin.download_model(model_id, out)
        assert got == {"id": model_id, "sha256": digest, "size": meta["size"], "not_modified": False}
        assert out.read_bytes() == sealed.path.read_bytes()
        assert [p.name for p in out.parent.iterdir()] == ["copy.mseal"]  # no temporary left behind
        # The copy opens like the original (the vault recipient's data key is the MEK).
        with modelseal.open(out, modelseal.MEK(sealed.recipient.data_key)) as model:
            assert bytes(model.read()) == sealed.data

        # If-None-Match with the ETag: 304 and the file is left alone.
        out.write_bytes(b"local edit")
        again = admin.download_model(model_id, out, headers={"If-None-Match": f'"{digest}"'})
        assert again["not_modified"] is True and out.read_bytes() == b"local edit"

        with pytest.raises(KeyServiceError) as e:
            admin.upload_model(model_id, sealed.path)
        assert e.value.status == 409 and e.value.code == "exists"
        with pytest.raises(KeyServiceError) as e:
            admin.model_info(f"{model_id}-none")
        assert e.value.status == 404

    auditor = vault.token_file("auditor", tmp_path)
    with vault.client(auditor) as reader:
        assert reader.model_info(model_id)["sha256"] == digest
        with pytest.raises(PermissionDenied) as denied:
            reader.download_model(model_id, tmp_path / "auditor.mseal")
        assert denied.value.code == "permission_denied"
        with pytest.raises(PermissionDenied):
            reader.upload_model(unique("model"), sealed.path)
    assert not (tmp_path / "auditor.mseal").exists()

    with vault.client() as admin:
        events = [
            r["event"]
            for r in admin.audit(limit=1000)
            if model_id in (r["event"].get("model"), r["event"].get("target"))
        ]
    assert ("model.upload", None) in {(e["op"], e.get("outcome")) for e in events}
    assert {e["outcome"] for e in events if e["op"] == "model.download"} >= {
        "ok",
        "not_modified",
        "permission_denied",
    }


def test_device_download_authorised_and_refused(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    sealed, model_id = uploaded(vault, key_name, tmp_path)
    data = sealed.path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    name, psk = entitled(vault, key_name)

    answer = device_get(vault, content_path(model_id), name, psk)
    assert answer.status_code == 200 and answer.content == data
    assert answer.headers["etag"] == f'"{digest}"' and int(answer.headers["content-length"]) == len(data)
    fresh = device_get(vault, content_path(model_id), name, psk, {"If-None-Match": f'"{digest}"'})
    assert fresh.status_code == 304 and fresh.content == b"" and fresh.headers["etag"] == f'"{digest}"'
    info = device_get(vault, f"/v1/models/{model_id}", name, psk)
    assert info.status_code == 200 and info.json()["sha256"] == digest

    # The client's download with device headers (no token at all).
    out = tmp_path / "device.mseal"
    with VaultClient(vault.url, ca=vault.ca) as client:
        headers = wire.device_headers(
            psk, domain="default", device=name, method="GET", path=content_path(model_id)
        )
        assert client.download_model(model_id, out, headers=headers)["sha256"] == digest
        assert out.read_bytes() == data
        # Replayed headers: the nonce is spent.
        with pytest.raises(PermissionDenied) as e:
            client.download_model(model_id, tmp_path / "replay.mseal", headers=headers)
        assert e.value.code == "release_denied"
        info_headers = wire.device_headers(
            psk, domain="default", device=name, method="GET", path=f"/v1/models/{model_id}"
        )
        assert client.model_info(model_id, headers=info_headers)["id"] == model_id
    assert not (tmp_path / "replay.mseal").exists()

    unauthorised, unauthorised_psk = device(vault)
    revoked, revoked_psk = entitled(vault, key_name)
    with vault.client() as admin:
        admin.revoke_device(revoked)
    headers = wire.device_headers(
        psk, domain="default", device=name, method="GET", path=content_path(model_id)
    )
    context = ssl.create_default_context(cafile=str(vault.ca))
    refusals = {
        "unauthorised": device_get(vault, content_path(model_id), unauthorised, unauthorised_psk),
        "revoked": device_get(vault, content_path(model_id), revoked, revoked_psk),
        "unknown": device_get(vault, content_path(model_id), "no-such-device", psk),
        "wrong psk": device_get(vault, content_path(model_id), name, unauthorised_psk),
        "unknown model": device_get(vault, content_path(f"{model_id}-none"), name, psk),
        "metadata, unauthorised": device_get(vault, f"/v1/models/{model_id}", unauthorised, unauthorised_psk),
        # headers made for the content, used on the metadata path
        "other path": httpx.get(
            f"{vault.url}/v1/models/{model_id}", headers=headers, verify=context, timeout=10
        ),
    }
    for what, refused in refusals.items():
        assert (refused.status_code, refused.content) == (403, DENIED), what
        assert "etag" not in refused.headers, what

    with vault.client() as admin:
        events = [
            r["event"]
            for r in admin.audit(limit=1000)
            if r["event"]["op"] in ("model.download", "model.read") and r["event"].get("model") == model_id
        ]
    outcomes = {(e.get("device"), e["outcome"]) for e in events}
    assert {(name, "ok"), (name, "replay"), (unauthorised, "no_policy"), (revoked, "revoked")} <= outcomes
    assert any(e["outcome"] == "unknown_device" and "device_hmac" in e for e in events)
    assert psk.hex() not in json.dumps(events)


def test_lease_for_a_model(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    sealed, model_id = uploaded(vault, key_name, tmp_path)
    name, psk = entitled(vault, key_name)
    outsider, outsider_psk = device(vault)

    def lease(who: str, secret: bytes, model: str) -> httpx.Response:
        body = json.dumps({"domain": "default", "device": who, "model": model}).encode()
        headers = wire.device_headers(
            secret, domain="default", device=who, method="POST", path="/v1/lease", body=body
        )
        context = ssl.create_default_context(cafile=str(vault.ca))
        return httpx.post(f"{vault.url}/v1/lease", content=body, headers=headers, verify=context, timeout=10)

    answer = lease(name, psk, model_id)
    assert answer.status_code == 200
    assert answer.json() == {
        "valid": True,
        "model": model_id,
        "key_name": key_name,
        "key_version": sealed.recipient.key_version,
        "not_after": None,
        "recheck_after": 300,
    }
    for refused in (lease(outsider, outsider_psk, model_id), lease(name, psk, f"{model_id}-none")):
        assert (refused.status_code, refused.content) == (403, DENIED)
    with vault.client() as admin:
        admin.config_key(key_name, disabled=True)  # a disabled key ends the lease too
        try:
            assert lease(name, psk, model_id).status_code == 403
        finally:
            admin.config_key(key_name, disabled=False)


def test_non_sealed_and_truncated_uploads_refused(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(100_000))
    sealed = seal_model(vault, key_name, tmp_path)
    truncated = tmp_path / "truncated.mseal"
    truncated.write_bytes(sealed.path.read_bytes()[:-10])
    model_id = unique("model")
    with vault.client() as admin:
        for bad in (junk, truncated):
            with pytest.raises(KeyServiceError) as e:
                admin.upload_model(model_id, bad)
            assert (e.value.status, e.value.code, str(e.value)) == (
                400,
                "not_sealed",
                "vault: not a sealed model",
            )
        assert model_id not in {m["id"] for m in admin.list_models()}
    folder = vault.data / datadir.MODELS_DIR / "default"
    assert not [p for p in folder.iterdir() if p.name.startswith(".upload-")]


def test_replace_collects_the_old_file(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    first, model_id = uploaded(vault, key_name, tmp_path)
    second = seal_model(vault, key_name, tmp_path)
    folder = vault.data / datadir.MODELS_DIR / "default"
    old = hashlib.sha256(first.path.read_bytes()).hexdigest()
    new = hashlib.sha256(second.path.read_bytes()).hexdigest()
    assert (folder / old).is_file()
    with vault.client() as admin:
        assert admin.upload_model(model_id, second.path, replace=True)["sha256"] == new
        assert admin.model_info(model_id)["sha256"] == new
    assert (folder / new).is_file() and not (folder / old).exists()
    assert (folder / new).read_bytes() == second.path.read_bytes()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class RssWatch:
    """The peak RSS of a process while a block runs (polled every 20 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self.base = _rss_kib(pid)
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_kib(self.pid))
            time.sleep(0.02)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / 1024


def test_big_model_is_streamed_both_ways(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    size = 200 << 20
    sealed = seal_model(vault, key_name, tmp_path, size=size)
    model_id = unique("big")
    name, psk = entitled(vault, key_name)
    pid = vault.process.pid
    with vault.client() as admin, RssWatch(pid) as upload:
        meta = admin.upload_model(model_id, sealed.path)
    assert meta["size"] == sealed.path.stat().st_size > size
    # Buffered in memory, the body alone would add 200 MiB; streamed, the server holds ~1 MiB chunks.
    assert upload.growth_mib < 64, f"server RSS grew by {upload.growth_mib:.0f} MiB during the upload"

    out = tmp_path / "big-copy.mseal"
    headers = wire.device_headers(
        psk, domain="default", device=name, method="GET", path=content_path(model_id)
    )
    with VaultClient(vault.url, ca=vault.ca) as client, RssWatch(pid) as download:
        assert client.download_model(model_id, out, headers=headers)["sha256"] == meta["sha256"]
    assert download.growth_mib < 64, f"server RSS grew by {download.growth_mib:.0f} MiB during the download"
    assert out.stat().st_size == meta["size"]
    assert hashlib.sha256(out.read_bytes()).hexdigest() == meta["sha256"]


def test_size_limit_and_missing_folder(tmp_path: Path) -> None:
    datadir.init(tmp_path / "v")
    store = datadir.DataDir(tmp_path / "v").open_store()
    token = (tmp_path / "v" / datadir.TOKEN_FILE).read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    try:
        limited = create_app(store, models_dir=str(tmp_path / "models"), max_model_size=1000)
        no_folder = create_app(store)

        async def go() -> list[httpx.Response]:
            out = []
            for app in (limited, no_folder):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="https://vault.test") as client:
                    out.append(await client.put("/v1/models/m", content=b"x" * 5000, headers=auth))

                    async def body() -> AsyncIterator[bytes]:
                        for _ in range(5):
                            yield b"x" * 400  # no Content-Length: the limit holds while reading

                    out.append(await client.put("/v1/models/m", content=body(), headers=auth))
            return out

        big, chunked, unavailable, _ = asyncio.run(go())
        assert big.status_code == 413 and big.json()["error"]["code"] == "too_large"
        assert chunked.status_code == 413
        assert unavailable.status_code == 503 and unavailable.json()["error"]["code"] == "models_unavailable"
        assert not [p for p in (tmp_path / "models").rglob("*") if p.is_file()]
    finally:
        store.engine.dispose()


def test_cli_round_trip(
    vault: VaultServer,
    key_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELSEAL_VAULT_ADDR", vault.url)
    monkeypatch.setenv("MODELSEAL_VAULT_TOKEN_FILE", str(vault.admin_token_file))
    monkeypatch.setenv("MODELSEAL_VAULT_CA", str(vault.ca))
    sealed = seal_model(vault, key_name, tmp_path)
    model_id = unique("cli")

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["vault", "model", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run("upload", str(sealed.path), "--id", model_id)
    assert code == 0 and json.loads(out)["id"] == model_id
    code, _, err = run("upload", str(sealed.path), "--id", model_id)
    assert code == 12 and "exists" in err and "Traceback" not in err
    assert run("upload", str(sealed.path), "--id", model_id, "--replace")[0] == 0
    code, out, _ = run("list")
    assert model_id in {m["id"] for m in json.loads(out)["models"]}
    code, out, _ = run("show", model_id)
    assert code == 0 and json.loads(out)["keys"] == [f"{key_name}:{sealed.recipient.key_version}"]
    target = tmp_path / "cli-copy.mseal"
    code, out, _ = run("download", model_id, "-o", str(target))
    assert code == 0 and target.read_bytes() == sealed.path.read_bytes()
    code, _, err = run("download", model_id, "-o", str(target))
    assert code == 7 and "exists" in err
    assert run("download", model_id, "-o", str(target), "--force")[0] == 0
    assert run("show", f"{model_id}-none")[0] == 14
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not sealed at all")
    code, _, err = run("upload", str(junk), "--id", unique("cli"))
    assert code == 12 and "not a sealed model" in err
