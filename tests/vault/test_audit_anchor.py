"""The audit chain's head is anchored outside the database: cutting records off the end, rolling the
database back to an older copy, or rewriting the anchored record is refused at start, at unseal and
by `vault audit verify`, as an attacker who holds the database (not the root key) would try.

Each attack is made with sqlite3 on the file, as that attacker would; the vault is a real data
folder made by `vault init`.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from modelseal.cli.main import main
from modelseal.vault.errors import AuditChainError
from modelseal.vault.server import anchor_audit, datadir, verify_audit
from modelseal.vault.server.audit_anchor import ANCHOR_FILE, Head
from modelseal.vault.server.callers import Principal
from modelseal.vault.server.store import Store

pytestmark = pytest.mark.faults

pytest.importorskip("sqlalchemy", reason="the vault extra is not installed")


def admin(store: Store) -> Principal:
    token = (store_data(store) / datadir.TOKEN_FILE).read_text().strip()
    return store.authenticate(token)


def store_data(store: Store) -> Path:
    assert store.audit.anchor is not None
    return store.audit.anchor.path.parent


def new_vault(tmp_path: Path, keys: int = 5) -> Path:
    data = tmp_path / "vault"
    datadir.init(data)
    store = datadir.DataDir(data).open_store()
    try:
        who = admin(store)
        for i in range(keys):
            store.create_key(who, f"k{i}")
    finally:
        store.engine.dispose()
    return data


def sql(data: Path, *statements: str) -> list[tuple[object, ...]]:
    """Edit the database as its thief would (no root key): plain SQL on the file. Returns the rows
    of the last statement."""
    db = sqlite3.connect(f"file:{data / 'vault.db'}?vfs=unix-excl", uri=True)
    try:
        with db:
            rows = [db.execute(statement).fetchall() for statement in statements]
        return rows[-1]
    finally:
        db.close()


def last_seq(data: Path) -> int:
    value = sql(data, "SELECT max(seq) FROM audit")[0][0]
    assert isinstance(value, int)
    return value


def opens(data: Path) -> None:
    datadir.DataDir(data).open_store().engine.dispose()


def test_a_vault_anchors_every_commit_and_opens_while_nothing_was_cut(tmp_path: Path) -> None:
    data = new_vault(tmp_path)
    assert (data / ANCHOR_FILE).stat().st_mode & 0o777 == 0o600
    status = verify_audit(data)
    assert status.records == last_seq(data) and status.anchored == last_seq(data)
    opens(data)


def test_records_cut_off_the_end_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = new_vault(tmp_path)
    head = last_seq(data)
    sql(data, f"DELETE FROM audit WHERE seq > {head - 2}")  # the chain that is left is valid
    cut = f"ends at record {head - 2} but this vault committed record {head}"
    with pytest.raises(AuditChainError, match=cut):
        opens(data)
    with pytest.raises(AuditChainError, match="cut off"):
        verify_audit(data)
    assert main(["vault", "audit", "verify", "--data", str(data)]) == AuditChainError.exit_code
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "rolled back to an older copy" in err and "Traceback" not in err


def test_the_whole_database_rolled_back_to_an_older_copy_is_refused(tmp_path: Path) -> None:
    data = new_vault(tmp_path)
    sql(data, "PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(data / "vault.db", tmp_path / "old.db")
    store = datadir.DataDir(data).open_store()
    store.create_key(admin(store), "later")  # a key created after the copy was taken
    store.engine.dispose()
    for suffix in ("-wal", "-shm"):
        (data / f"vault.db{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "old.db", data / "vault.db")
    with pytest.raises(AuditChainError, match="rolled back to an older copy"):
        opens(data)


def test_a_rewritten_anchored_record_is_refused(tmp_path: Path) -> None:
    data = new_vault(tmp_path)
    head = last_seq(data)
    sql(data, f"UPDATE audit SET hash = '{'ab' * 32}' WHERE seq = {head}")
    with pytest.raises(AuditChainError, match=f"record {head} is not the one this vault committed"):
        opens(data)


def test_a_missing_or_edited_anchor_is_refused_until_the_operator_reanchors(tmp_path: Path) -> None:
    data = new_vault(tmp_path)
    anchor = data / ANCHOR_FILE
    original = anchor.read_bytes()
    edited = bytearray(original)
    edited[12] ^= 1  # inside the sequence number of the first slot
    edited[512 + 12] ^= 1
    anchor.write_bytes(bytes(edited))
    with pytest.raises(AuditChainError, match="fails its check"):
        opens(data)
    anchor.unlink()
    with pytest.raises(AuditChainError, match="vault audit anchor"):
        opens(data)
    seq = anchor_audit(data)
    assert seq == last_seq(data)
    opens(data)
    ((event,),) = sql(data, f"SELECT event FROM audit WHERE seq = {seq}")
    assert isinstance(event, str) and '"op":"audit.anchor"' in event and '"previous":null' in event


def test_a_torn_slot_falls_back_to_the_other_one(tmp_path: Path) -> None:
    data = new_vault(tmp_path)
    anchor = data / ANCHOR_FILE
    raw = bytearray(anchor.read_bytes())
    # The slot holding the newest head is torn (power lost mid-write): the other, older, still holds.
    newest = 0 if int.from_bytes(raw[8:16], "big") > int.from_bytes(raw[520:528], "big") else 512
    raw[newest + 20 : newest + 40] = bytes(20)
    anchor.write_bytes(bytes(raw))
    status = verify_audit(data)
    assert status.anchored is not None and status.anchored < last_seq(data)
    opens(data)


def test_the_anchor_never_moves_back(tmp_path: Path) -> None:
    data = new_vault(tmp_path, keys=1)
    store = datadir.DataDir(data).open_store()
    try:
        assert store.audit.anchor is not None
        head = store.audit.anchor.read()
        assert head is not None
        store.audit.anchor.advance(Head(head.seq - 1, "00" * 32))
        assert store.audit.anchor.read() == head
    finally:
        store.engine.dispose()


def test_a_shamir_vault_checks_the_anchor_when_it_unseals_and_stays_sealed_if_cut(tmp_path: Path) -> None:
    pytest.importorskip("Crypto.Protocol.SecretSharing", reason="pycryptodome not installed (extra: vault)")
    import asyncio

    import httpx

    from modelseal.vault.server.app import create_app
    from modelseal.vault.server.roots.shamir import ShamirOptions

    data, share_dir = tmp_path / "vault", tmp_path / "shares"
    datadir.init(data, "shamir", shamir=ShamirOptions(3, 2, share_dir))
    shares = [(share_dir / f"share-{i}.txt").read_text().strip() for i in (1, 2)]
    head = last_seq(data)
    assert head >= 1
    sql(data, f"DELETE FROM audit WHERE seq = {head}")
    store = datadir.DataDir(data).open_store()  # sealed: nothing to check yet, so it starts
    assert store.barrier.sealed
    app = create_app(store)

    async def unseal() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://vault.test") as client:
            return [await client.post("/v1/sys/unseal", json={"share": s}) for s in shares]

    try:
        first, second = asyncio.run(unseal())
        assert first.status_code == 200 and first.json()["sealed"] is True
        assert second.status_code == 500
        assert second.json()["error"]["code"] == "audit_chain_broken"
        assert "rolled back" in second.json()["error"]["message"]
        assert store.barrier.sealed  # nothing is served from a database that lost records
    finally:
        app.state.release_gate.close()
        store.engine.dispose()
