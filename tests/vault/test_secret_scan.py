"""After a session of operations, no master key, data key, token, device PSK or released file key is
anywhere in storage or logs.

Searched: the SQLite database with its -wal and -shm files, the server log and every audit
record, for each secret raw, in hex (both cases) and in base64 (standard and URL-safe, with and
without padding). The server log must also be JSON lines with only the request log's fields.
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
from pathlib import Path

from modelseal.vault.server.barrier import KeyFileBarrier
from modelseal.vault.server.engine import make_engine, sqlite_url
from modelseal.vault.server.store import Store

from .conftest import VaultServer
from .release_helpers import build_request, open_answer, post, seal_model, unique


def encodings(secret: bytes) -> set[bytes]:
    forms = {secret, secret.hex().encode(), secret.hex().upper().encode()}
    for b64 in (base64.b64encode(secret), base64.urlsafe_b64encode(secret)):
        forms |= {b64, b64.rstrip(b"=")}
    return forms


def master_keys(data: Path, scratch: Path) -> list[bytes]:
    """Decrypt every stored version with the root key, as only the vault itself can. From a copy of
    the files, as a thief would take them: the running vault holds the database itself."""
    barrier = KeyFileBarrier.from_file(data / "root.key")
    scratch.mkdir()
    for name in ("vault.db", "vault.db-wal"):
        shutil.copy(data / name, scratch / name)
    conn = sqlite3.connect(scratch / "vault.db")
    try:
        rows = conn.execute(
            "SELECT k.domain_id, k.name, k.type, v.version, v.material FROM master_key_versions v "
            "JOIN master_keys k ON k.id = v.key_id"
        ).fetchall()
    finally:
        conn.close()
    return [
        barrier.decrypt(material, table="master_key_versions", row=f"{domain}/{name}/{version}", purpose=kind)
        for domain, name, kind, version, material in rows
    ]


def test_no_secret_in_storage_logs_or_audit(vault: VaultServer, key_name: str, tmp_path: Path) -> None:
    tokens = [vault.admin_token_file.read_text().strip()]
    data_keys: list[bytes] = []
    operator_file = vault.token_file("operator", tmp_path)
    tokens.append(operator_file.read_text().strip())
    with vault.client() as admin, vault.client(operator_file) as operator:
        for i in range(3):
            admin.create_key(f"{key_name}-{i}")
            for _ in range(2):
                answer = operator.datakey(f"{key_name}-{i}", plaintext=True)
                assert answer.plaintext is not None
                data_keys.append(answer.plaintext)
                assert (
                    operator.unwrap(answer.key_name, answer.key_version, answer.wrapped) == answer.plaintext
                )
            admin.rotate_key(f"{key_name}-{i}")
        tokens += [str(admin.create_token(role)["token"]) for role in ("admin", "operator", "auditor")]

    # Devices: PSKs (also rotated-away ones), releases (granted and refused) of file keys.
    released: list[bytes] = []
    with vault.client() as admin:
        names = [unique("scan") for _ in range(2)]
        old_psks = [admin.create_device(name, ["scan"])[1] for name in names]
        psks = [admin.rotate_psk(name)[1] for name in names]  # the old ones stay in the scan
        admin.put_policy(unique("p"), f"{key_name}-0", devices=names)
    for name, psk in zip(names, psks, strict=True):
        sealed = seal_model(vault, f"{key_name}-0", tmp_path)
        request = build_request(name, psk, sealed)
        reply = post(vault, request.body)
        assert reply.status_code == 200
        released.append(open_answer(request, name, sealed, reply.json()))
        assert released[-1] == sealed.recipient.data_key
        assert post(vault, build_request(name, bytes(32), sealed).body).status_code == 403
    with vault.client() as admin:
        created_psks = [admin.create_device(unique("scan"))[1] for _ in range(2)]
        audit_text = repr(admin.audit(limit=1000)).encode()

    masters = master_keys(vault.data, tmp_path / "copy")
    assert len(masters) >= 6 and all(len(m) == 32 for m in masters)
    secrets: dict[str, bytes] = {f"master key {i}": m for i, m in enumerate(masters)}
    secrets |= {f"data key {i}": k for i, k in enumerate(data_keys)}
    for i, token in enumerate(tokens):
        secrets[f"token {i}"] = token.encode()
        random_part = token.removeprefix("msv.")
        secrets[f"token {i} bytes"] = base64.urlsafe_b64decode(random_part + "=" * (-len(random_part) % 4))

    secrets |= {f"psk {i}": p for i, p in enumerate(psks + old_psks + created_psks)}
    secrets |= {f"released file key {i}": k for i, k in enumerate(released)}

    places = {p.name: p.read_bytes() for p in vault.data.glob("vault.db*")}
    assert "vault.db-wal" in places  # the server is live: the WAL holds the recent writes
    places["server log"] = vault.log.read_bytes()
    assert_json_log(vault.log, {"/v1/release", "/v1/keys/{name}/datakey", "/v1/tokens"})
    places["audit records"] = audit_text
    hits = [
        f"{what} in {where}"
        for what, secret in secrets.items()
        for form in encodings(secret)
        for where, content in places.items()
        if form in content
    ]
    assert hits == []


REQUEST_FIELDS = {"ts", "level", "event", "method", "route", "status", "ms", "domain", "actor"}


def assert_json_log(log: Path, routes: set[str]) -> None:
    """`vault serve` writes one JSON object per line (uvicorn's text and access log replaced), and a
    request line holds only the named fields: no header, body or raw path can slip in."""
    records = []
    for number, line in enumerate(log.read_text().splitlines(), 1):
        record = json.loads(line)
        assert isinstance(record, dict) and {"ts", "level", "event"} <= set(record), f"line {number}"
        records.append(record)
    requests = [r for r in records if r["event"] == "request"]
    assert routes <= {r["route"] for r in requests}
    assert all(set(r) <= REQUEST_FIELDS for r in requests)
    assert any("actor" in r and r["route"] == "/v1/tokens" for r in requests)


def test_scan_would_find_a_leak(tmp_path: Path) -> None:
    """The scan's own check: a secret really written somewhere is found in each encoding."""
    secret = bytes(range(32))
    for form in encodings(secret):
        assert form in b"prefix " + form + b" suffix"
    # and the store's audit HMAC is not one of the encodings
    store = Store(make_engine(sqlite_url(tmp_path)), KeyFileBarrier(bytes(32)))
    assert not encodings(secret) & {store.secret_digest("data key", secret).encode()}
