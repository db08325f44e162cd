"""The audit trail: one record per operation in the same transaction; the hash chain catches edits."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from modelseal.cli.main import main
from modelseal.vault.errors import AuditChainError
from modelseal.vault.server import datadir
from modelseal.vault.server.audit import chain_hash, verify_audit
from modelseal.vault.server.engine import sqlite_file
from modelseal.vault.server.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    datadir.init(tmp_path / "vault")
    return datadir.DataDir(tmp_path / "vault").open_store()


def session(store: Store) -> None:
    admin = store.authenticate(
        (data_of(store) / "admin.token").read_text().strip()
    )
    store.create_key(admin, "k")
    dk = store.datakey(admin, "k", plaintext=True)
    store.rotate_key(admin, "k")
    store.unwrap(admin, "k", 1, dk.wrapped)
    store.list_keys(admin)


def data_of(store: Store) -> Path:
    database = sqlite_file(store.engine)
    assert database is not None
    return database.parent


def db(store: Store) -> sqlite3.Connection:
    # In this process, beside the store: the same VFS, which holds the file for this process only.
    return sqlite3.connect(f"file:{data_of(store) / 'vault.db'}?vfs=unix-excl", uri=True)


def test_every_operation_is_chained(store: Store) -> None:
    session(store)
    assert verify_audit(store.engine) == 6  # bootstrap + 5 operations
    with db(store) as conn:
        rows = conn.execute("SELECT seq, event, prev_hash, hash FROM audit ORDER BY seq").fetchall()
    ops = [json.loads(e)["op"] for _, e, _, _ in rows]
    assert ops == ["token.bootstrap", "key.create", "key.datakey", "key.rotate", "key.unwrap", "key.list"]
    assert rows[0][2] == "0" * 64 and all(rows[i][2] == rows[i - 1][3] for i in range(1, len(rows)))
    datakey = json.loads(rows[2][1])
    assert set(datakey) >= {"data_key_hmac", "wrapped_sha256", "actor", "time", "key", "version"}


def test_modified_record_is_detected(store: Store) -> None:
    session(store)
    with db(store) as conn:
        event = conn.execute("SELECT event FROM audit WHERE seq = 3").fetchone()[0]
        conn.execute("UPDATE audit SET event = ? WHERE seq = 3", (event.replace('"k"', '"x"'),))
    with pytest.raises(AuditChainError, match="record 3: hash does not match"):
        verify_audit(store.engine)


def test_modified_record_with_fixed_hash_is_detected_by_the_next(store: Store) -> None:
    session(store)
    with db(store) as conn:
        event, prev = conn.execute("SELECT event, prev_hash FROM audit WHERE seq = 2").fetchone()
        forged = event.replace('"k"', '"x"')
        conn.execute("UPDATE audit SET event = ?, hash = ? WHERE seq = 2", (forged, chain_hash(prev, forged)))
    with pytest.raises(AuditChainError, match="record 3: prev_hash"):
        verify_audit(store.engine)


def test_deleted_record_is_detected(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    session(store)
    data = data_of(store)
    assert main(["vault", "audit", "verify", "--data", str(data)]) == 0
    store.engine.dispose()
    with db(store) as conn:
        conn.execute("DELETE FROM audit WHERE seq = 4")
    assert main(["vault", "audit", "verify", "--data", str(data)]) == 16
    assert "audit chain broken at record 5" in capsys.readouterr().err


def test_no_effect_without_its_audit_record(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    admin = store.authenticate(
        (data_of(store) / "admin.token").read_text().strip()
    )
    store.create_key(admin, "k")

    def broken(*_: Any, **__: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store.audit, "record", broken)
    with pytest.raises(OSError):
        store.create_key(admin, "never")
    with pytest.raises(OSError):
        store.rotate_key(admin, "k")
    with pytest.raises(OSError):
        store.datakey(admin, "k", plaintext=True)  # nothing is released unaudited
    monkeypatch.undo()
    assert store.list_keys(admin) == ["k"]
    assert store.read_key(admin, "k").latest_version == 1
    assert verify_audit(store.engine) == 4


def test_concurrent_writers_keep_one_chain(store: Store) -> None:
    """Writers start with BEGIN IMMEDIATE: concurrent appends serialize instead of forking the chain."""
    from concurrent.futures import ThreadPoolExecutor

    admin = store.authenticate(
        (data_of(store) / "admin.token").read_text().strip()
    )

    def create(i: int) -> None:
        store.create_key(admin, f"k{i}")
        store.datakey(admin, f"k{i}", plaintext=False)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(40)))
    assert len(store.list_keys(admin)) == 40
    assert verify_audit(store.engine) == 1 + 80 + 1
