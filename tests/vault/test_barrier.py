"""The barrier and the stanza body: AAD binding, sealed state, root key file hygiene."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from modelseal.errors import KeyFileError
from modelseal.keyrelease import datakeys
from modelseal.vault.errors import KeyServiceError, Unavailable
from modelseal.vault.server import datadir
from modelseal.vault.server.barrier import (
    KeyFileBarrier,
    RootBarrier,
    create_root_key,
    key_check,
    matches_key_check,
    read_root_key,
)


def test_ciphertexts_are_bound_to_table_row_purpose() -> None:
    barrier = KeyFileBarrier(os.urandom(32))
    blob = barrier.encrypt(b"secret", table="t", row="1/a/1", purpose="p")
    assert barrier.decrypt(blob, table="t", row="1/a/1", purpose="p") == b"secret"
    for table, row, purpose in (("u", "1/a/1", "p"), ("t", "1/a/2", "p"), ("t", "1/a/1", "q")):
        with pytest.raises(KeyServiceError, match="fails authentication"):
            barrier.decrypt(blob, table=table, row=row, purpose=purpose)
    with pytest.raises(KeyServiceError, match="fails authentication"):
        KeyFileBarrier(os.urandom(32)).decrypt(blob, table="t", row="1/a/1", purpose="p")


def test_sealed_barrier_refuses() -> None:
    barrier = KeyFileBarrier(os.urandom(32))
    blob = barrier.encrypt(b"x", table="t", row="r", purpose="p")
    barrier.seal()
    assert barrier.sealed
    with pytest.raises(Unavailable):
        barrier.decrypt(blob, table="t", row="r", purpose="p")
    with pytest.raises(Unavailable):
        barrier.hmac("audit", b"x")
    assert KeyFileBarrier(None).sealed


def test_root_key_file(tmp_path: Path) -> None:
    path = tmp_path / "root.key"
    create_root_key(path)
    assert path.stat().st_mode & 0o777 == 0o600 and len(read_root_key(path)) == 32
    with pytest.raises(KeyFileError, match="refusing"):
        create_root_key(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        read_root_key(path)


def test_swapped_key_version_rows_fail(tmp_path: Path) -> None:
    """Copying version 1's stored material over version 2's must not make v2 use v1's key."""
    datadir.init(tmp_path / "v")
    store = datadir.DataDir(tmp_path / "v").open_store()
    admin = store.authenticate((tmp_path / "v" / "admin.token").read_text().strip())
    store.create_key(admin, "k")
    store.rotate_key(admin, "k")
    with sqlite3.connect(tmp_path / "v" / "vault.db") as conn:
        v1 = conn.execute("SELECT material FROM master_key_versions WHERE version = 1").fetchone()[0]
        conn.execute("UPDATE master_key_versions SET material = ? WHERE version = 2", (v1,))
    with pytest.raises(KeyServiceError, match="fails authentication"):
        store.datakey(admin, "k", plaintext=True)


def test_data_dir_layout(tmp_path: Path) -> None:
    data = tmp_path / "v"
    token = datadir.init(data)
    assert data.stat().st_mode & 0o777 == 0o700
    for private in ("root.key", "admin.token", "vault.db", "tls/server.key", "tls/ca.key"):
        assert (data / private).stat().st_mode & 0o777 == 0o600, private
    assert (data / "admin.token").read_text().strip() == token
    with pytest.raises(Exception, match="not empty"):
        datadir.init(data)


def test_wrap_aad_is_unambiguous() -> None:
    assert datakeys.wrap_aad("ab", 1) != datakeys.wrap_aad("a", 1)
    master, mek = os.urandom(32), os.urandom(32)
    body = datakeys.wrap(master, "k", 3, mek)
    assert len(body) == datakeys.WRAPPED_SIZE and datakeys.unwrap(master, "k", 3, body) == mek
    with pytest.raises(KeyServiceError):
        datakeys.unwrap(master, "k", 4, body)


def test_key_check_binds_the_root_and_the_vault() -> None:
    root = bytearray(os.urandom(32))
    check = key_check(root, "a" * 32)
    assert len(check) == 32 and bytes(root) not in check
    assert matches_key_check(bytes(root), "a" * 32, check)
    assert not matches_key_check(root, "b" * 32, check)
    assert not matches_key_check(os.urandom(32), "a" * 32, check)
    # A bytearray root gives the same barrier as bytes, so callers can wipe theirs afterwards.
    blob = RootBarrier(root).encrypt(b"x", table="t", row="r", purpose="p")
    root_copy = bytes(root)
    root[:] = bytes(32)
    assert RootBarrier(root_copy).decrypt(blob, table="t", row="r", purpose="p") == b"x"


def test_vault_json_must_name_a_usable_root(tmp_path: Path) -> None:
    data = tmp_path / "v"
    datadir.init(data)
    config_path = data / "vault.json"
    config = json.loads(config_path.read_text())
    assert config == {"layout": 1, "root": "key-file"}
    for broken in (
        {"layout": 1, "root": "hsm9000"},
        {"layout": 1, "root": "shamir"},
        {"layout": 1, "root": "shamir", "vault_id": "XYZ", "shamir": {"threshold": 3}},
        {"layout": 1, "root": "shamir", "vault_id": "a" * 32, "shamir": {"threshold": 1, "key_check": ""}},
        {"layout": 1, "root": "shamir", "vault_id": "a" * 32, "shamir": {"threshold": 3, "key_check": "00"}},
        {"layout": 1, "root": "pkcs11", "vault_id": "a" * 32, "pkcs11": "not a section"},
    ):
        config_path.write_text(json.dumps(broken))
        with pytest.raises(KeyServiceError):
            datadir.DataDir(data).open_store()
