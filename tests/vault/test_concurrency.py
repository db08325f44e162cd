"""Two real `vault serve` processes on one PostgreSQL, hammered at once: 0 duplicates, 0 lost.

Each task creates a key on one process, asks the other for a data key under it and has the first
unwrap it, so both processes write (and append to the one audit chain) concurrently the whole time.
Afterwards every acknowledged key must be listed exactly once by both processes, have exactly one
version row, give a working data key, and the audit chain must verify.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import text

from modelseal.vault.client import VaultClient
from modelseal.vault.errors import KeyServiceError
from modelseal.vault.server.engine import make_engine

from .conftest import VaultServer, serve_process, start_server, stop_server
from .postgres import PostgresServer

WORKERS = 12


@dataclass
class Outcome:
    acknowledged: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ack(self, name: str) -> None:
        with self.lock:
            self.acknowledged.add(name)

    def error(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)


class Clients:
    """One keep-alive client per (thread, server): what many independent callers look like."""

    def __init__(self, servers: list[VaultServer]) -> None:
        self.servers = servers
        self.local = threading.local()
        self.opened: list[VaultClient] = []
        self.lock = threading.Lock()

    def get(self, index: int) -> VaultClient:
        cache: dict[int, VaultClient] | None = getattr(self.local, "clients", None)
        if cache is None:
            cache = self.local.clients = {}
        if index not in cache:
            cache[index] = self.servers[index].client()
            with self.lock:
                self.opened.append(cache[index])
        return cache[index]

    def close(self) -> None:
        for client in self.opened:
            client.close()


def create_and_use(clients: Clients, outcome: Outcome, name: str, i: int) -> None:
    """Create on one server; data key from the other; unwrap on the first. Records the outcome."""
    n = len(clients.servers)
    try:
        clients.get(i % n).create_key(name)
    except KeyServiceError as e:
        outcome.error(f"create {name}: {e}")
        return
    outcome.ack(name)
    try:
        dk = clients.get((i + 1) % n).datakey(name, plaintext=True)
        if clients.get(i % n).unwrap(name, dk.key_version, dk.wrapped) != dk.plaintext:
            outcome.error(f"unwrap {name}: a different key came back")
    except KeyServiceError as e:
        outcome.error(f"use {name}: {e}")


def hammer(servers: list[VaultServer], names: list[str], workers: int = WORKERS) -> Outcome:
    outcome, clients = Outcome(), Clients(servers)
    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda a: create_and_use(clients, outcome, a[1], a[0]), enumerate(names)))
    finally:
        clients.close()
    return outcome


def check_keys(server: VaultServer, acknowledged: set[str], may_exist: set[str] | None = None) -> None:
    """Every acknowledged key is listed once and works; nothing else appeared (but the ones in
    `may_exist`: asked for, with the answer lost in a crash)."""
    with server.client() as admin:
        listed = admin.list_keys()
    assert len(listed) == len(set(listed)), "a key is listed twice"
    missing = acknowledged - set(listed)
    assert not missing, f"{len(missing)} acknowledged key(s) lost, e.g. {sorted(missing)[:3]}"
    extra = set(listed) - acknowledged - (may_exist or set())
    assert not extra, f"keys nobody asked for: {sorted(extra)[:3]}"

    def works(name: str) -> bool:
        with server.client() as client:
            dk = client.datakey(name, plaintext=True)
            return client.unwrap(name, dk.key_version, dk.wrapped) == dk.plaintext

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(works, sorted(acknowledged)))


def check_atomicity(url: str) -> None:
    """No effect committed without the rest of its transaction. A SQLite file is read once no
    vault holds it (each holds its file exclusively); PostgreSQL while they run."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            # A key row without its version row, or without its audit record.
            incomplete = conn.execute(
                text(
                    "SELECT k.name FROM master_keys k LEFT JOIN master_key_versions v"
                    " ON v.key_id = k.id AND v.version = 1 WHERE v.id IS NULL"
                )
            ).all()
            duplicates = conn.execute(
                text(
                    "SELECT key_id, version FROM master_key_versions"
                    " GROUP BY key_id, version HAVING count(*) > 1"
                )
            ).all()
            creates = conn.execute(text("SELECT count(*) FROM audit WHERE op = 'key.create'")).scalar()
            keys = conn.execute(text("SELECT count(*) FROM master_keys")).scalar()
    finally:
        engine.dispose()
    assert incomplete == [] and duplicates == []
    # Refused creations (409) are audited as key.create too, so at least one record per key.
    assert creates is not None and keys is not None and creates >= keys


def audit_verifies(server: VaultServer) -> int:
    """The records of the chain, checked by the running vault (chain and anchor)."""
    with server.client() as admin:
        return int(admin.verify_audit()["records"])


@pytest.fixture
def two_on_postgres(postgres: PostgresServer, tmp_path: Path) -> Iterator[Callable[[], list[VaultServer]]]:
    started: list[VaultServer] = []
    url = postgres.create_database()

    def make() -> list[VaultServer]:
        first = start_server(tmp_path, url)
        started.append(first)
        # Same data folder (same root key and TLS certificate), its own port and log.
        started.append(serve_process(first.data, tmp_path / "server2.log", url))
        return started

    try:
        yield make
    finally:
        for server in started:
            stop_server(server)
        postgres.drop_database(url)


def run_two_processes(make: Callable[[], list[VaultServer]], count: int) -> None:
    servers = make()
    assert servers[0].url != servers[1].url
    names = [f"c-{i:05d}" for i in range(count)]
    outcome = hammer(servers, names)
    assert outcome.errors == []
    assert outcome.acknowledged == set(names)
    for server in servers:  # both processes see the same, complete set
        assert all(s.process.poll() is None for s in servers)
        with server.client() as admin:
            assert sorted(admin.list_keys()) == names
    check_keys(servers[1], outcome.acknowledged)
    assert servers[0].database_url is not None
    check_atomicity(servers[0].database_url)
    # One record per operation, none lost or doubled: bootstrap, 3 lists, and per key: create,
    # datakey, unwrap, then check_keys' datakey and unwrap.
    assert audit_verifies(servers[0]) == 1 + 3 + 5 * count


def test_two_processes_on_one_postgresql_create_100_keys(
    two_on_postgres: Callable[[], list[VaultServer]],
) -> None:
    run_two_processes(two_on_postgres, 100)


@pytest.mark.slow
def test_two_processes_on_one_postgresql_create_1000_keys(
    two_on_postgres: Callable[[], list[VaultServer]],
) -> None:
    run_two_processes(two_on_postgres, 1000)
