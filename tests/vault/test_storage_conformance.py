"""One storage contract, two databases: every test here runs on SQLite and on a real PostgreSQL.

The store-level tests drive Store and DeviceStore directly on a fresh database of each backend
(the `database_url` fixture); the last ones go through a real `vault serve --database` over TLS.
Where the two databases differ (NUL in text, lost updates under READ COMMITTED, concurrent
migrations) the contract is pinned by a test that would fail on the backend that broke it.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

import modelseal
import modelseal.vault
from modelseal.cli.main import main
from modelseal.errors import OutputError
from modelseal.keyrelease import wire
from modelseal.vault.errors import AuditChainError, KeyServiceError, NotFound, PermissionDenied, Unavailable
from modelseal.vault.server import datadir
from modelseal.vault.server import store as store_module
from modelseal.vault.server.audit import verify_audit
from modelseal.vault.server.barrier import KeyFileBarrier
from modelseal.vault.server.callers import Principal
from modelseal.vault.server.device_rows import ReleaseDenied
from modelseal.vault.server.devices import DeviceStore
from modelseal.vault.server.engine import make_engine, upgrade_schema
from modelseal.vault.server.release import ReleaseRequest
from modelseal.vault.server.schema import Base, Domain, MasterKey, MasterKeyVersion, now
from modelseal.vault.server.store import Store

from .conftest import VaultServer, start_server, stop_server
from .postgres import PostgresServer
from .release_helpers import device, identity, opens, seal_model, unique

ROOT = bytes(range(32))


@dataclass
class Vault:
    store: Store
    devices: DeviceStore
    admin: Principal

    @property
    def backend(self) -> str:
        return self.store.engine.dialect.name

    def outcomes(self, who: Principal | None = None) -> list[str]:
        """The outcome of every key release in the audit, oldest first."""
        records = self.store.audit_records(who or self.admin, 0, 1000)
        return [r["event"]["outcome"] for r in records if r["event"]["op"] == "key.release"]


def open_vault(url: str) -> Vault:
    engine = make_engine(url)
    upgrade_schema(engine)
    store = Store(engine, KeyFileBarrier(ROOT))
    with Session(engine) as session:
        has_admin = session.execute(text("SELECT count(*) FROM tokens")).scalar()
    token = store.bootstrap_admin() if not has_admin else None
    admin = store.authenticate(token) if token else _any_admin(store)
    return Vault(store, DeviceStore(store), admin)


def _any_admin(store: Store) -> Principal:
    # A second engine on a database another Vault bootstrapped: act as the same principal.
    with Session(store.engine) as session:
        accessor, domain_id = session.execute(text("SELECT accessor, domain_id FROM tokens LIMIT 1")).one()
    return Principal(accessor, "admin", "default", domain_id)


@pytest.fixture
def vault(database_url: str) -> Iterator[Vault]:
    v = open_vault(database_url)
    try:
        yield v
    finally:
        v.store.engine.dispose()


@pytest.fixture
def twin(vault: Vault, database_url: str) -> Iterator[Vault]:
    """A second engine on the same database: what a second vault process sees."""
    other = open_vault(database_url)
    try:
        yield other
    finally:
        other.store.engine.dispose()


def release_request(
    v: Vault,
    device_name: str,
    psk: bytes,
    key: str,
    *,
    nonce: bytes | None = None,
    timestamp: int | None = None,
    wrong_mac: bool = False,
) -> tuple[ReleaseRequest, bytes]:
    """A PSK-proved release request for a fresh data key of `key`, and that data key."""
    dk = v.store.datakey(v.admin, key, plaintext=True)
    public = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    req = ReleaseRequest(
        domain="default",
        device=device_name,
        key_name=key,
        key_version=dk.key_version,
        wrapped=dk.wrapped,
        timestamp=int(time.time()) if timestamp is None else timestamp,
        nonce=nonce or os.urandom(16),
        ephemeral_public=public,
        mac=b"",
    )
    mac = wire.mac(os.urandom(32) if wrong_mac else psk, req.mac_input())
    return replace(req, mac=mac), dk.plaintext


def released(v: Vault, req: ReleaseRequest) -> bool:
    try:
        v.devices.releases.release(req)
    except ReleaseDenied:
        return False
    return True


# --- schema -------------------------------------------------------------------------------------


def _import_all_vault_modules() -> None:
    """Every ORM table registers on Base when its module is imported: import them all, so the drift
    check covers whatever tables later increments add."""
    for info in pkgutil.walk_packages(modelseal.vault.__path__, "modelseal.vault."):
        if ".migrations" in info.name:
            continue
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as e:
            # An optional extra that isn't installed; its tables (if any) then show up as drift.
            if (e.name or "").startswith("modelseal"):
                raise


def test_every_migration_applies_and_matches_the_models(vault: Vault) -> None:
    _import_all_vault_modules()
    config = Config()
    config.set_main_option("script_location", str(Path(store_module.__file__).parent / "migrations"))
    head = ScriptDirectory.from_config(config).get_current_head()
    with vault.store.engine.connect() as conn:
        context = MigrationContext.configure(conn)
        assert context.get_current_revision() == head
        drift = [
            d
            for d in compare_metadata(context, Base.metadata)
            # Plain indexes live only in the migrations; alembic's own table is not a model.
            if d[0] != "remove_index" and not (d[0] == "remove_table" and d[1].name == "alembic_version")
        ]
    assert drift == []
    upgrade_schema(vault.store.engine)  # at head: a second run is a no-op


_UPGRADE = """
import sys
from modelseal.vault.server.engine import make_engine, upgrade_schema
engine = make_engine(sys.argv[1])
engine.connect().close()  # connected before the start signal
print("ready", flush=True)
sys.stdin.readline()  # start together
upgrade_schema(engine)
print("ok")
"""


def test_concurrent_upgrades_from_several_processes_migrate_once(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        # One process holds a SQLite file (engine.py): a second waits for it, then is refused.
        held = make_engine(database_url)
        try:
            upgrade_schema(held)
            done = subprocess.run(
                [sys.executable, "-c", _UPGRADE, database_url],
                input=b"go\n", capture_output=True, timeout=60, check=False,
            )  # fmt: skip
        finally:
            held.dispose()
        assert done.returncode != 0 and b"ok" not in done.stdout
        assert b"database is locked" in done.stderr  # the CLI's one line for it: test_served_...
        return
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _UPGRADE, database_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == b"ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()
        results = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0 and out.strip() == b"ok", err.decode()[-2000:]
    v = open_vault(database_url)
    try:
        with Session(v.store.engine) as session:
            assert session.execute(select(func.count(Domain.id))).scalar() == 1  # seeded once
    finally:
        v.store.engine.dispose()


# --- master keys and data keys ------------------------------------------------------------------


def test_key_lifecycle(vault: Vault) -> None:
    s, admin = vault.store, vault.admin
    info = s.create_key(admin, "k")
    assert (info.latest_version, info.min_decryption_version, info.disabled) == (1, 1, False)
    assert set(info.versions) == {1}
    with pytest.raises(KeyServiceError) as exists:
        s.create_key(admin, "k")
    assert (exists.value.status, exists.value.code) == (409, "exists")
    for bad in ("", "-x", "a/b", "x" * 129, "k\x00"):
        with pytest.raises(KeyServiceError) as invalid:
            s.create_key(admin, bad)
        assert invalid.value.code == "invalid_name"
    with pytest.raises(KeyServiceError):
        s.create_key(admin, "t", key_type="rsa")
    s.create_key(admin, "a")
    assert s.list_keys(admin) == ["a", "k"]
    with pytest.raises(NotFound):
        s.read_key(admin, "missing")
    with pytest.raises(NotFound):
        s.rotate_key(admin, "missing")

    rotated = s.rotate_key(admin, "k")
    assert rotated.latest_version == 2 and set(rotated.versions) == {1, 2}
    assert s.read_key(admin, "k") == rotated
    with pytest.raises(KeyServiceError) as out_of_range:
        s.config_key(admin, "k", min_decryption_version=3, disabled=None)
    assert out_of_range.value.code == "invalid_version"
    assert s.config_key(admin, "k", min_decryption_version=2, disabled=None).min_decryption_version == 2
    assert s.read_key(admin, "k").min_decryption_version == 2


def test_datakey_and_unwrap_per_version(vault: Vault) -> None:
    s, admin = vault.store, vault.admin
    s.create_key(admin, "k")
    first = s.datakey(admin, "k", plaintext=True)
    s.rotate_key(admin, "k")
    second = s.datakey(admin, "k", plaintext=False)
    assert (first.key_version, second.key_version) == (1, 2)
    assert first.plaintext != second.plaintext and len(first.plaintext) == 32
    # Old versions keep opening old models after a rotation.
    assert s.unwrap(admin, "k", 1, first.wrapped) == first.plaintext
    assert s.unwrap(admin, "k", 2, second.wrapped) == second.plaintext
    with pytest.raises(KeyServiceError):
        s.unwrap(admin, "k", 2, first.wrapped)  # bound to its version
    with pytest.raises(NotFound):
        s.unwrap(admin, "k", 3, second.wrapped)

    s.config_key(admin, "k", min_decryption_version=2, disabled=None)
    with pytest.raises(KeyServiceError) as retired:
        s.unwrap(admin, "k", 1, first.wrapped)
    assert retired.value.code == "version_retired"

    s.config_key(admin, "k", min_decryption_version=None, disabled=True)
    for call in (
        lambda: s.datakey(admin, "k", plaintext=False),
        lambda: s.unwrap(admin, "k", 2, second.wrapped),
    ):
        with pytest.raises(KeyServiceError) as disabled:
            call()
        assert disabled.value.code == "key_disabled"
    s.config_key(admin, "k", min_decryption_version=None, disabled=False)
    assert s.unwrap(admin, "k", 2, second.wrapped) == second.plaintext

    # The database holds only barrier ciphertext: no stored blob contains a data key.
    with Session(s.engine) as session:
        blobs = session.execute(select(MasterKeyVersion.material)).scalars().all()
    assert len(blobs) == 2 and not any(first.plaintext in b or second.plaintext in b for b in blobs)


# --- tokens, roles, domains ---------------------------------------------------------------------


def test_tokens_and_roles_per_domain(vault: Vault) -> None:
    s, admin = vault.store, vault.admin
    tokens = {role: s.create_token(admin, role, f"a {role}")[0] for role in ("admin", "operator", "auditor")}
    for role, token in tokens.items():
        who = s.authenticate(token)
        assert (who.role, who.domain) == (role, "default")
    with pytest.raises(KeyServiceError) as bad_role:
        s.create_token(admin, "root")
    assert bad_role.value.code == "invalid_role"
    # NUL is storable in SQLite text but not in PostgreSQL's: both refuse it the same clean way.
    for name in ("bad\x00name", "two\nlines", "x" * 129):
        with pytest.raises(KeyServiceError) as bad_name:
            s.create_token(admin, "operator", name)
        assert (bad_name.value.status, bad_name.value.code) == (400, "invalid_name")
    for token in ("", "msv.unknown", tokens["admin"] + "x"):
        with pytest.raises(PermissionDenied):
            s.authenticate(token)

    # A second domain: same key names, separate keys, no cross-domain reads.
    with s.write_session() as session:  # the store's session: its rows are bound (row_macs.py)
        session.add(Domain(name="tenant-b", created=now()))
        session.flush()
        other_id = session.execute(select(Domain.id).where(Domain.name == "tenant-b")).scalar_one()
        s._insert_token(session, "msv.tenant-b-token", "admin", other_id, "b admin")
    other = s.authenticate("msv.tenant-b-token")
    assert (other.domain, other.role) == ("tenant-b", "admin")
    s.create_key(admin, "shared-name")
    s.create_key(other, "shared-name")
    s.create_key(other, "only-b")
    assert s.list_keys(admin) == ["shared-name"]
    assert s.list_keys(other) == ["only-b", "shared-name"]
    with pytest.raises(NotFound):
        s.read_key(admin, "only-b")
    dk = s.datakey(other, "shared-name", plaintext=True)
    with pytest.raises(KeyServiceError):
        s.unwrap(admin, "shared-name", 1, dk.wrapped)  # the same name in another domain is another key
    assert {r["event"]["domain"] for r in s.audit_records(other, 0, 1000)} == {"tenant-b"}


# --- devices, PSKs, lockout ---------------------------------------------------------------------


def test_devices_psk_rotate_revoke(vault: Vault) -> None:
    d, admin = vault.devices, vault.admin
    meta, psk = d.create_device(admin, "cam", ["edge", "edge", "north"])
    assert len(psk) == wire.PSK_SIZE and meta["groups"] == ["edge", "north"]
    assert meta["psk_generation"] == 1 and not meta["revoked"] and not meta["locked"]
    with pytest.raises(KeyServiceError) as exists:
        d.create_device(admin, "cam", [])
    assert exists.value.status == 409
    d.create_device(admin, "board", [])
    assert d.list_devices(admin) == ["board", "cam"]
    with pytest.raises(NotFound):
        d.read_device(admin, "ghost")

    vault.store.create_key(admin, "k")
    d.put_policy(admin, "p", "k", [], ["edge"])
    old_req, _ = release_request(vault, "cam", psk, "k")
    meta2, psk2 = d.rotate_psk(admin, "cam")
    assert meta2["psk_generation"] == 2 and psk2 != psk
    assert not released(vault, old_req)  # the old PSK stopped working at the rotation's commit
    req, _ = release_request(vault, "cam", psk2, "k")
    assert released(vault, req)

    assert d.revoke_device(admin, "cam")["revoked"]
    assert d.read_device(admin, "cam")["revoked_at"] is not None
    req, _ = release_request(vault, "cam", psk2, "k")
    assert not released(vault, req)  # revocation takes effect at commit
    assert vault.outcomes()[-3:] == ["bad_mac", "released", "revoked"]


def test_lockout_after_five_failures_then_unlock(vault: Vault) -> None:
    d, admin = vault.devices, vault.admin
    _, psk = d.create_device(admin, "cam", [])
    vault.store.create_key(admin, "k")
    d.put_policy(admin, "p", "k", ["cam"], [])
    for _ in range(5):
        req, _ = release_request(vault, "cam", psk, "k", wrong_mac=True)
        assert not released(vault, req)
    meta = d.read_device(admin, "cam")
    assert meta["locked"] and meta["recent_failures"] == 5
    req, _ = release_request(vault, "cam", psk, "k")
    assert not released(vault, req)  # the right PSK, but locked
    # An unknown device is refused the same way (and its name only appears as an HMAC).
    ghost, _ = release_request(vault, "ghost", psk, "k")
    assert not released(vault, ghost)
    assert vault.outcomes()[-2:] == ["locked", "unknown_device"]
    assert "ghost" not in str(vault.store.audit_records(admin, 0, 1000)[-1]["event"])

    assert not d.unlock_device(admin, "cam")["locked"]
    req, _ = release_request(vault, "cam", psk, "k")
    assert released(vault, req)


# --- policy, licence, release -------------------------------------------------------------------


def test_policy_and_licence_decisions(vault: Vault) -> None:
    s, d, admin = vault.store, vault.devices, vault.admin
    s.create_key(admin, "k")
    _, cam = d.create_device(admin, "cam", ["edge"])
    _, board = d.create_device(admin, "board", ["edge"])
    _, other = d.create_device(admin, "other", ["north"])

    req, _ = release_request(vault, "cam", cam, "k")
    assert not released(vault, req)  # default deny
    d.put_policy(admin, "p", "k", [], ["edge"])
    assert d.read_policy(admin, "p")["groups"] == ["edge"] and d.list_policies(admin) == ["p"]
    req, mek = release_request(vault, "cam", cam, "k")
    sealed = vault.devices.releases.release(req)
    assert len(sealed) > len(mek)  # HPKE-sealed, never the key itself
    req, _ = release_request(vault, "other", other, "k")
    assert not released(vault, req)

    with pytest.raises(NotFound):
        d.put_policy(admin, "typo", "no-such-key", ["cam"], [])
    with pytest.raises(NotFound):
        d.create_licence(admin, "l", "no-policy", not_after=None, max_uses=1, max_devices=None)

    d.create_licence(admin, "uses", "p", not_after=None, max_uses=3, max_devices=1)
    assert d.read_licence(admin, "uses")["uses"] == 0
    results = [released(vault, release_request(vault, "cam", cam, "k")[0]) for _ in range(4)]
    assert results == [True, True, True, False]
    req, _ = release_request(vault, "board", board, "k")
    assert not released(vault, req)
    licence = d.read_licence(admin, "uses")
    assert (licence["uses"], licence["devices"]) == (3, 1)
    assert vault.outcomes()[-2:] == ["licence_used_up", "licence_used_up"]

    # An expired licence refuses, whatever its other limits.
    d.put_policy(admin, "q", "k", ["other"], [])
    d.create_licence(admin, "old", "q", not_after="2000-01-01T00:00:00Z", max_uses=None, max_devices=None)
    req, _ = release_request(vault, "other", other, "k")
    assert not released(vault, req)
    assert vault.outcomes()[-1] == "licence_expired"


def test_release_replay_is_refused(vault: Vault) -> None:
    d, admin = vault.devices, vault.admin
    vault.store.create_key(admin, "k")
    _, psk = d.create_device(admin, "cam", [])
    d.put_policy(admin, "p", "k", ["cam"], [])
    req, _ = release_request(vault, "cam", psk, "k")
    assert released(vault, req)
    assert not released(vault, req)
    stale, _ = release_request(vault, "cam", psk, "k", timestamp=int(time.time()) - 3600)
    assert not released(vault, stale)
    assert vault.outcomes() == ["released", "replay", "stale_timestamp"]


def test_concurrent_twins_of_one_request_release_once(vault: Vault, twin: Vault) -> None:
    """Two processes get the same captured request at once: exactly one answers with the key."""
    d, admin = vault.devices, vault.admin
    vault.store.create_key(admin, "k")
    _, psk = d.create_device(admin, "cam", [])
    d.put_policy(admin, "p", "k", ["cam"], [])
    for _ in range(5):
        req, _ = release_request(vault, "cam", psk, "k")
        barrier = threading.Barrier(4)

        def attempt(v: Vault, req: ReleaseRequest = req, barrier: threading.Barrier = barrier) -> bool:
            barrier.wait()
            return released(v, req)

        with ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(attempt, [vault, twin, vault, twin]))
        assert outcomes.count(True) == 1
    assert verify_audit(vault.store.engine) > 0


# --- audit --------------------------------------------------------------------------------------


def test_audit_chain_appends_and_verifies(vault: Vault) -> None:
    s, admin = vault.store, vault.admin
    before = verify_audit(s.engine)
    s.create_key(admin, "k")
    dk = s.datakey(admin, "k", plaintext=True)
    s.unwrap(admin, "k", 1, dk.wrapped)
    with pytest.raises(NotFound):
        s.read_key(admin, "nope")  # refusals are recorded too
    assert verify_audit(s.engine) == before + 4
    records = s.audit_records(admin, before, 10)
    assert [r["event"]["op"] for r in records] == ["key.create", "key.datakey", "key.unwrap", "key.read"]
    assert records[-1]["event"]["outcome"] == "not_found"
    text_of_all = str(s.audit_records(admin, 0, 1000))
    assert dk.plaintext.hex() not in text_of_all

    with Session(s.engine) as session, session.begin():
        session.execute(
            text("UPDATE audit SET event = replace(event, '\"k\"', '\"x\"') WHERE seq = :seq"),
            {"seq": before + 2},
        )
    with pytest.raises(AuditChainError, match=f"record {before + 2}: hash does not match"):
        verify_audit(s.engine)


def test_no_effect_without_its_audit_record(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    s, admin = vault.store, vault.admin
    s.create_key(admin, "k")
    count = verify_audit(s.engine)

    def broken(*_: Any, **__: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(s.audit, "record", broken)
    for call in (
        lambda: s.create_key(admin, "never"),
        lambda: s.rotate_key(admin, "k"),
        lambda: s.datakey(admin, "k", plaintext=True),
    ):
        with pytest.raises(OSError):
            call()
    monkeypatch.undo()
    assert s.list_keys(admin) == ["k"] and s.read_key(admin, "k").latest_version == 1
    assert verify_audit(s.engine) == count + 2


# --- several writers: what must stay serialisable -----------------------------------------------


def _together(n: int, fn: Callable[[int], Any]) -> list[Any]:
    start = threading.Barrier(n)

    def run(i: int) -> Any:
        start.wait()
        try:
            return fn(i)
        except KeyServiceError as e:
            return e

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_two_writers_never_lose_updates(vault: Vault, twin: Vault) -> None:
    """Two engines (as two processes) racing on one key, one licence and one device."""
    s, d, admin = vault.store, vault.devices, vault.admin
    s.create_key(admin, "k")
    writers = [vault, twin]

    # Key versions: every rotation gets its own version, none is lost or duplicated.
    _together(8, lambda i: writers[i % 2].store.rotate_key(admin, "k"))
    info = s.read_key(admin, "k")
    assert info.latest_version == 9 and sorted(info.versions) == list(range(1, 10))

    # Key names: one creation of a name wins, the others see 409.
    outcomes = _together(8, lambda i: writers[i % 2].store.create_key(admin, "race"))
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert len(refused) == 7 and all(isinstance(o, KeyServiceError) and o.status == 409 for o in refused)

    # Licence max_uses: exactly the limit is released, however many ask at once.
    _, psk = d.create_device(admin, "cam", [])
    d.put_policy(admin, "p", "k", ["cam"], [])
    d.create_licence(admin, "l", "p", not_after=None, max_uses=3, max_devices=None)
    requests = [release_request(vault, "cam", psk, "k")[0] for _ in range(8)]
    results = _together(8, lambda i: released(writers[i % 2], requests[i]))
    assert results.count(True) == 3 and d.read_licence(admin, "l")["uses"] == 3

    # Lockout: concurrent wrong MACs are all counted; the device is locked after them.
    _, psk2 = d.create_device(admin, "cam2", [])
    d.put_policy(admin, "p2", "k", ["cam2"], [])
    bad = [release_request(vault, "cam2", psk2, "k", wrong_mac=True)[0] for _ in range(7)]
    assert not any(_together(7, lambda i: released(writers[i % 2], bad[i])))
    assert d.read_device(admin, "cam2")["recent_failures"] == 7
    good, _ = release_request(vault, "cam2", psk2, "k")
    assert not released(twin, good)

    with Session(s.engine) as session:
        names = session.execute(select(MasterKey.name)).scalars().all()
    assert sorted(names) == ["k", "race"]
    verify_audit(s.engine)


# --- engine URLs --------------------------------------------------------------------------------


def test_database_urls_fail_closed_without_echoing_secrets() -> None:
    for url in ("mysql://user:s3cret-pw@db/vault", "not a url", "oracle://u:s3cret-pw@h/x"):
        with pytest.raises(KeyServiceError) as e:
            make_engine(url)
        assert e.value.code == "invalid_database" and "s3cret-pw" not in str(e.value)
    assert make_engine("postgresql://u@127.0.0.1/x").dialect.driver == "psycopg"
    assert make_engine("postgres://u@127.0.0.1/x").dialect.driver == "psycopg"


def test_unreachable_postgresql_is_one_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("psycopg", reason="psycopg not installed (extra: vault)")
    with pytest.raises(Unavailable) as e:
        upgrade_schema(make_engine("postgresql+psycopg://u:s3cret-pw@127.0.0.1:1/vault"))
    assert e.value.exit_code == 15 and "s3cret-pw" not in str(e.value)
    assert main(["vault", "init", "--data", str(tmp_path / "v"), "--database",
                 "postgresql+psycopg://u@127.0.0.1:1/vault"]) == 15  # fmt: skip
    assert "not reachable" in capsys.readouterr().err and not (tmp_path / "v").exists()


# --- through `vault serve --database` -----------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    url = None
    if request.param == "postgresql":
        pg: PostgresServer = request.getfixturevalue("postgres")
        url = pg.create_database()
    server = start_server(tmp_path_factory.mktemp(f"served-{request.param}"), url)
    try:
        yield server
    finally:
        stop_server(server)


def test_served_keys_release_and_audit(served: VaultServer, tmp_path: Path) -> None:
    key = unique("k")
    sealed = seal_model(served, key, tmp_path)
    name, psk = device(served, ["edge"])
    with served.client() as admin:
        admin.rotate_key(key)
        admin.put_policy(unique("p"), key, groups=["edge"])
    assert opens(served, sealed, name, psk)  # version 1 still opens after the rotation
    with served.client() as admin:
        admin.revoke_device(name)
    with pytest.raises(PermissionDenied):
        modelseal.open(sealed.path, identity(served, name, psk))
    args = ["vault", "audit", "verify", "--data", str(served.data)]
    if served.database_url:
        args += ["--database", served.database_url]
        assert main(args) == 0  # beside the running vaults
    else:
        # The running vault holds its SQLite file: the CLI says so in one line; the API verifies.
        assert main(args) == 15
        with served.client() as admin:
            assert admin.verify_audit()["records"] > 0


def test_init_refuses_a_database_that_holds_a_vault(postgres: PostgresServer, tmp_path: Path) -> None:
    """Only a shared database can clash: a SQLite database is born with its data folder."""
    url = postgres.create_database()
    try:
        datadir.init(tmp_path / "first", database_url=url)
        with pytest.raises(OutputError, match="already holds a vault"):
            datadir.init(tmp_path / "second", database_url=url)
        assert not (tmp_path / "second").exists()
    finally:
        postgres.drop_database(url)
