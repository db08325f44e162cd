"""Master-key export to a guard: off by default, admin only, audited with the guard's fingerprint;
the bundle opens only with the guard's identity and only as exported, and its versions unwrap the
data keys made before the export. No master key shows in the log, the database or the audit."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

import modelseal
from modelseal.cli.main import main
from modelseal.keyfiles import load_identity, write_x25519_identity
from modelseal.keyrelease import datakeys
from modelseal.recipients import X25519Identity
from modelseal.vault.errors import KeyServiceError, PermissionDenied
from modelseal.vault.server.export import guard_fingerprint, open_bundle

from .conftest import VaultServer
from .release_helpers import encodings
from .serve_helpers import log_records, tls_context, vault_with


def guard(folder: Path, name: str = "guard") -> tuple[X25519Identity, Path, str]:
    """A guard identity file and its public half (G.pub holds the ms-x25519: string)."""
    identity = modelseal.generate_identity()
    recipient = write_x25519_identity(identity, folder / f"{name}.key")
    pub = folder / f"{name}.pub"
    pub.write_text(recipient + "\n")
    return identity, pub, recipient


def audit_events(server: VaultServer) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = 0
    with server.client() as admin:
        while records := admin.audit(after=after, limit=1000):
            found += [r["event"] for r in records]
            after = records[-1]["seq"]
    return found


def test_export_is_off_by_default(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    _, _, recipient = guard(tmp_path)
    with vault.client() as admin:
        admin.create_key(key_name)
        with pytest.raises(PermissionDenied) as refused:
            admin.export_key(key_name, recipient)
    assert refused.value.code == "export_disabled" and "export disabled" in str(refused.value)
    refusals = [e for e in audit_events(vault) if e["op"] == "key.export" and e.get("target") == key_name]
    assert [e["outcome"] for e in refusals] == ["export_disabled"]


def test_exported_versions_unwrap_earlier_data_keys_and_leak_nowhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    identity, pub, _ = guard(tmp_path)
    with vault_with(tmp_path / "export", "--allow-export") as server:
        made: list[tuple[int, bytes, bytes]] = []  # (version, wrapped, plaintext) before the export
        with server.client() as admin:
            admin.create_key("models")
            for _ in range(2):
                answer = admin.datakey("models", plaintext=True)
                assert answer.plaintext is not None
                made.append((answer.key_version, answer.wrapped, answer.plaintext))
                admin.rotate_key("models")
            admin.config_key("models", min_decryption_version=2)

        monkeypatch.setenv("MODELSEAL_VAULT_ADDR", server.url)
        monkeypatch.setenv("MODELSEAL_VAULT_TOKEN_FILE", str(server.admin_token_file))
        monkeypatch.setenv("MODELSEAL_VAULT_CA", str(server.ca))
        out = tmp_path / "models.export"
        argv = ["vault", "key", "export", "models", "--guard-pub", str(pub), "-o", str(out)]
        assert main(argv) == 0
        _, err = capsys.readouterr()
        fingerprint = guard_fingerprint(identity.private_key.public_key())
        assert fingerprint in err and out.stat().st_mode & 0o777 == 0o600
        assert main(argv) == 7  # exists: not overwritten without --force
        capsys.readouterr()

        guard_identity = load_identity(tmp_path / "guard.key")
        assert isinstance(guard_identity, X25519Identity)
        exported = open_bundle(out, guard_identity)
        assert (exported.domain, exported.key_name, exported.key_type) == ("default", "models", "aes256-gcm")
        assert exported.min_decryption_version == 2 and sorted(exported.versions) == [1, 2, 3]
        assert all(repr(key) not in repr(exported) for key in exported.versions.values())
        for version, wrapped, plaintext in made:
            assert datakeys.unwrap(exported.versions[version], "models", version, wrapped) == plaintext

        records = [e for e in audit_events(server) if e["op"] == "key.export"]
        assert len(records) == 1 and records[0]["versions"] == [1, 2, 3]
        assert records[0]["guard_fingerprint"] == fingerprint and records[0]["key"] == "models"
        audit_text = json.dumps(audit_events(server)).encode()
        places = {p.name: p.read_bytes() for p in server.data.glob("vault.db*")}  # WAL: while live
    log_records(server)  # every line is JSON (read once the server stopped: no line half-written)
    places |= {"server log": server.log.read_bytes(), "audit": audit_text}
    assert "vault.db-wal" in places
    hits = [
        f"version {version} in {where}"
        for version, key in exported.versions.items()
        for form in encodings(key)
        for where, content in places.items()
        if form in content
    ]
    assert hits == []


def test_only_an_admin_exports_and_only_the_guard_opens_the_bundle_unaltered(tmp_path: Path) -> None:
    identity, _, recipient = guard(tmp_path)
    stranger, _, _ = guard(tmp_path, "stranger")
    with vault_with(tmp_path / "export", "--allow-export") as server:
        with server.client() as admin:
            admin.create_key("k")
            admin.rotate_key("k")
            bundle = admin.export_key("k", recipient)
            for bad in ("ms-x25519:AAAA", "/etc/passwd", "x" * 200):
                with pytest.raises(KeyServiceError) as invalid:
                    admin.export_key("k", bad)
                assert invalid.value.status == 400
            operator = admin.create_token("operator")["token"]
        refused = httpx.post(
            f"{server.url}/v1/keys/k/export",
            json={"guard_public": recipient},
            headers={"Authorization": f"Bearer {operator}"},
            verify=tls_context(server),
        )
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
    data = json.dumps(bundle).encode()
    assert sorted(open_bundle(data, identity).versions) == [1, 2]
    with pytest.raises(modelseal.NoMatchingIdentityError):
        open_bundle(data, stranger)
    for field, value in (("key_name", "other"), ("domain", "tenant-b"), ("versions", [1, 3])):
        with pytest.raises(modelseal.IntegrityError):
            open_bundle(json.dumps({**bundle, field: value}).encode(), identity)
    sealed = bytearray(base64.b64decode(bundle["sealed"]))
    sealed[-1] ^= 1
    tampered = {**bundle, "sealed": base64.b64encode(bytes(sealed)).decode()}
    with pytest.raises(modelseal.IntegrityError):
        open_bundle(json.dumps(tampered).encode(), identity)
    for broken in (b"not json", json.dumps({**bundle, "format": "x"}).encode(), os.urandom(64)):
        with pytest.raises(modelseal.FormatError):
            open_bundle(broken, identity)
