"""kill -9 of a vault process in the middle of concurrent key creation, on SQLite and PostgreSQL.

On PostgreSQL two `vault serve` processes share one database (and one data folder); on SQLite one
process holds its file (exclusively: engine.py). Clients create keys without pause. A process is
killed with SIGKILL while requests are in flight: on PostgreSQL the survivor must keep serving (its
transaction-scoped advisory lock dies with the process), and after the killed one is restarted
(SQLite: its lock on the file died with it too) every acknowledged key is there, complete and
working, the audit chain verifies and the database passes its integrity checks. A key whose answer
was lost in the crash may exist or not, but never half-made.
"""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from modelseal.vault.errors import KeyServiceError
from modelseal.vault.server.engine import sqlite_url

from .conftest import VaultServer, serve_process, start_server, stop_server
from .postgres import PostgresServer
from .test_concurrency import Clients, Outcome, audit_verifies, check_atomicity, check_keys

WORKERS = 8


@pytest.fixture(params=["sqlite", "postgresql"])
def servers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[VaultServer]]:
    url, pg = None, None
    if request.param == "postgresql":
        pg = request.getfixturevalue("postgres")
        assert isinstance(pg, PostgresServer)
        url = pg.create_database()
    started: list[VaultServer] = []
    try:
        started.append(start_server(tmp_path, url))
        if url is not None:
            started.append(serve_process(started[0].data, tmp_path / "server2.log", url))
        yield started
    finally:
        for server in started:
            stop_server(server)
        if pg is not None and url is not None:
            pg.drop_database(url)


class Load:
    """Workers creating keys on both servers until told to stop; records what was acknowledged."""

    def __init__(self, servers: list[VaultServer]) -> None:
        self.clients = Clients(servers)
        self.outcome = Outcome()
        self.attempted: set[str] = set()
        self.stop = threading.Event()
        self.names = (f"x-{i:06d}" for i in itertools.count())
        self.lock = threading.Lock()
        self.dead: set[int] = set()  # servers that were killed: don't count their refusals
        self.after_kill = 0

    def _next(self) -> str:
        with self.lock:
            name = next(self.names)
            self.attempted.add(name)
            return name

    def worker(self, w: int) -> None:
        index = w % len(self.clients.servers)
        while not self.stop.is_set():
            name = self._next()
            try:
                self.clients.get(index).create_key(name)
            except KeyServiceError as e:
                if index in self.dead:
                    return  # the connection to the killed process broke: expected
                self.outcome.error(f"{name}: {e}")
                return
            self.outcome.ack(name)
            with self.lock:
                if self.dead:
                    self.after_kill += 1

    def wait_for(self, acknowledged: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.outcome.acknowledged) < acknowledged:
            assert time.monotonic() < deadline, f"only {len(self.outcome.acknowledged)} keys created"
            assert not self.outcome.errors, self.outcome.errors[:3]
            time.sleep(0.01)


def kill_during_creation(
    servers: list[VaultServer],
    tmp_path: Path,
    rounds: int,
    per_round: int,
) -> None:
    load = Load(servers)
    for round_no in range(rounds):
        load.dead.clear()
        with ThreadPoolExecutor(WORKERS) as pool:
            futures = [pool.submit(load.worker, w) for w in range(WORKERS)]
            load.wait_for(len(load.outcome.acknowledged) + per_round)
            victim = servers[0]
            with load.lock:
                load.dead.add(0)
                load.after_kill = 0
            os.kill(victim.process.pid, signal.SIGKILL)
            victim.process.wait(10)
            # The survivor keeps creating: nothing the dead process held blocks it.
            deadline = time.monotonic() + 30
            while len(servers) > 1 and load.after_kill < 20:
                assert time.monotonic() < deadline, "the surviving vault stopped making progress"
                assert not load.outcome.errors, load.outcome.errors[:3]
                time.sleep(0.01)
            load.stop.set()
            for f in futures:
                f.result()
        load.stop.clear()
        assert load.outcome.errors == []
        load.clients.close()
        servers[0] = serve_process(victim.data, tmp_path / f"restart{round_no}.log", victim.database_url)
        load.clients = Clients(servers)
    load.clients.close()

    lost_answers = load.attempted - load.outcome.acknowledged
    assert lost_answers, "the kill hit no request in flight"
    for server in servers:
        check_keys(server, load.outcome.acknowledged, may_exist=lost_answers)
    audit_verifies(servers[-1])
    if servers[0].database_url is not None:
        check_atomicity(servers[0].database_url)
        return
    stop_server(servers[0])  # the file is read as it is at rest, once no vault holds it
    check_atomicity(sqlite_url(servers[0].data))
    db = sqlite3.connect(servers[0].data / "vault.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        db.close()


def test_kill_9_during_concurrent_key_creation(
    servers: list[VaultServer], tmp_path: Path
) -> None:
    kill_during_creation(servers, tmp_path, rounds=1, per_round=60)


@pytest.mark.slow
def test_kill_9_repeatedly_during_concurrent_key_creation(
    servers: list[VaultServer], tmp_path: Path
) -> None:
    kill_during_creation(servers, tmp_path, rounds=5, per_round=200)
