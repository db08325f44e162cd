"""Soak: mixed load on a real `vault serve` for a long time, with no memory growth and no fd leak.

The load (no Crypto-fs): releaser threads sending PSK key releases (vault_load.py), a thread
opening vault-sealed models through DeviceIdentity (a long-lived identity, and a fresh one, with its
own TLS connection, every tenth open), a thread sealing new models under fresh vault data keys (the
admin API) and opening them, and a thread sealing and opening models locally with X25519 identities.

It runs a warm-up (10 % of the duration, 10 s to 5 min), stops, and takes the baseline at rest:
the vault process's RSS (VmRSS in /proc/PID/status) and open fds (/proc/PID/fd) and the test
process's fds. Then the soak itself for the duration, stops, and measures again at rest:
- the vault's RSS grew by less than 5 % over the baseline;
- neither process holds more fds than at the baseline (sockets of the closed clients are given a
  few seconds to close: a leak never does);
- every answer was a success (releases 200, opens and seals returned the model), the load made
  progress, the vault still serves and its audit chain verifies.

`pytest -m soak` (`make soak`) runs it for MODELSEAL_SOAK_SECONDS (default 3600); a 120 s run of the
same test is in the `slow` set. The figures are printed (-s shows them).
"""

from __future__ import annotations

import gc
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from vault.conftest import VaultServer, start_server, stop_server
from vault.release_helpers import Sealed, device, identity, seal_model, unique

import modelseal
from modelseal.vault.client import DeviceIdentity

from .vault_load import Load

MAX_RSS_GROWTH = 0.05
DEFAULT_SOAK_SECONDS = 3600.0
SHORT_SOAK_SECONDS = 120.0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def fds(pid: int) -> list[str]:
    """What the process's open fds point to (readlink of /proc/PID/fd/*)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:  # closed meanwhile (or the listing's own fd)
            continue
    return sorted(found)


def settled_fds(pid: int, limit: int, timeout: float = 10) -> list[str]:
    """The fds once their number is at most ``limit``, or after ``timeout`` (closing sockets are
    given time to go: the server closes its side after the client's)."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        found = fds(pid)
        if len(found) <= limit or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@dataclass
class Work:
    """Counts of what the non-release threads did, and their problems."""

    done: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str) -> None:
        with self.lock:
            self.done[what] = self.done.get(what, 0) + 1

    def problem(self, what: str) -> None:
        with self.lock:
            self.problems.append(what)


def loop(stop: threading.Event, work: Work, name: str, step: Callable[[int], None]) -> None:
    i = 0
    try:
        while not stop.is_set():
            step(i)
            work.count(name)
            i += 1
    except Exception as e:  # recorded: the test fails on it, with the reason
        work.problem(f"{name}: {type(e).__name__}: {e}")


@dataclass
class Fleet:
    server: VaultServer
    key: str
    sealed: Sealed
    releasers: list[tuple[str, bytes]]
    opener: tuple[str, bytes]


def setup(server: VaultServer, folder: Path) -> Fleet:
    key = unique("k")
    sealed = seal_model(server, key, folder, size=200_000)
    releasers = [device(server, ["soak"]) for _ in range(3)]
    opener = device(server, ["soak"])
    with server.client() as admin:
        admin.put_policy(unique("p"), key, groups=["soak"])
    return Fleet(server, key, sealed, releasers, opener)


def run_load(fleet: Fleet, folder: Path, seconds: float) -> tuple[int, Work]:
    """All the load for ``seconds``; returns (releases answered, the other threads' work)."""
    server, sealed = fleet.server, fleet.sealed
    load = Load(server, sealed)
    work = Work()
    stop = threading.Event()
    folder.mkdir(parents=True, exist_ok=True)
    long_lived: DeviceIdentity = identity(server, *fleet.opener)

    def open_vault_model(i: int) -> None:
        if i % 10 == 9:
            with identity(server, *fleet.opener) as fresh, modelseal.open(sealed.path, fresh) as model:
                assert bytes(model.read()) == sealed.data
            return
        with modelseal.open(sealed.path, long_lived) as model:
            assert bytes(model.read()) == sealed.data

    def seal_and_open_vault(i: int) -> None:
        fresh = seal_model(server, fleet.key, folder, size=50_000)
        try:
            with identity(server, *fleet.opener) as dev, modelseal.open(fresh.path, dev) as model:
                assert bytes(model.read()) == fresh.data
        finally:
            fresh.path.unlink()
            fresh.path.with_suffix(".bin").unlink()
        time.sleep(0.05)

    def seal_and_open_local(i: int) -> None:
        who = modelseal.generate_identity()
        src, out = folder / f"local-{i % 4}.bin", folder / f"local-{i % 4}.mseal"
        data = os.urandom(100_000)
        src.write_bytes(data)
        modelseal.seal(src, out, [who.recipient])
        try:
            with modelseal.open(out, who) as model:
                assert bytes(model.read()) == data
        finally:
            out.unlink()

    threads = [
        threading.Thread(target=loop, args=(stop, work, name, step), daemon=True)
        for name, step in (
            ("open", open_vault_model),
            ("seal+open vault", seal_and_open_vault),
            ("seal+open local", seal_and_open_local),
        )
    ]
    try:
        load.start(fleet.releasers, per_device=2)
        for thread in threads:
            thread.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (load.problems or work.problems):
            time.sleep(0.5)
    finally:
        stop.set()
        load.finish()
        for thread in threads:
            thread.join(60)
        long_lived.close()
    assert not load.problems, load.problems[:5]
    assert not work.problems, work.problems[:5]
    assert not any(thread.is_alive() for thread in threads)
    statuses = {a.status for a in load.answers}
    assert statuses == {200}, statuses
    return len(load.answers), work


def at_rest(server: VaultServer) -> tuple[int, list[str], list[str]]:
    """(vault RSS, vault fds, test process fds) with no load; RSS as the median of 5 readings."""
    time.sleep(1)
    readings = []
    for _ in range(5):
        readings.append(rss_bytes(server.process.pid))
        time.sleep(0.2)
    return int(statistics.median(readings)), fds(server.process.pid), fds(os.getpid())


def soak(tmp_path: Path, seconds: float) -> None:
    server = start_server(tmp_path)
    try:
        fleet = setup(server, tmp_path)
        warmup = min(300.0, max(10.0, seconds * 0.1))
        run_load(fleet, tmp_path / "warmup", warmup)
        rss_before, vault_before, test_before = at_rest(server)

        started = time.monotonic()
        trace: list[tuple[float, int]] = []  # (seconds into the soak, vault RSS): for the report
        done = threading.Event()

        def sample() -> None:
            while not done.wait(max(1.0, seconds / 60)):
                trace.append((time.monotonic() - started, rss_bytes(server.process.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            releases, work = run_load(fleet, tmp_path / "soak", seconds)
        finally:
            done.set()
            sampler.join()
        elapsed = time.monotonic() - started
        rss_after, _, _ = at_rest(server)
        vault_after = settled_fds(server.process.pid, len(vault_before))
        test_after = settled_fds(os.getpid(), len(test_before))

        growth = (rss_after - rss_before) / rss_before
        step = max(1, len(trace) // 12)
        print(
            f"\nsoak {elapsed:.0f} s (after {warmup:.0f} s warm-up): {releases} releases "
            f"({releases / elapsed:.0f}/s), {work.done}; vault RSS {rss_before / 2**20:.1f} -> "
            f"{rss_after / 2**20:.1f} MiB ({growth:+.2%}); vault fds {len(vault_before)} -> "
            f"{len(vault_after)}; test process fds {len(test_before)} -> {len(test_after)}; RSS under "
            f"load (s: MiB): {', '.join(f'{t:.0f}: {r / 2**20:.1f}' for t, r in trace[::step])}"
        )
        # Progress: the load really ran (a few releases a second at least, every thread looped).
        assert releases >= seconds and all(
            work.done.get(name, 0) > 0 for name in ("open", "seal+open vault", "seal+open local")
        ), work.done
        assert growth < MAX_RSS_GROWTH, f"vault RSS grew {growth:.2%}"
        assert len(vault_after) <= len(vault_before), sorted(set(vault_after) - set(vault_before))
        assert len(test_after) <= len(test_before), sorted(set(test_after) - set(test_before))

        with server.client() as admin:
            assert admin.ready()["status"] == "ready"
            assert admin.verify_audit()["records"] > releases
    finally:
        stop_server(server)


def soak_seconds() -> float:
    return float(os.environ.get("MODELSEAL_SOAK_SECONDS", DEFAULT_SOAK_SECONDS))


@pytest.mark.soak
def test_soak(tmp_path: Path) -> None:
    soak(tmp_path, soak_seconds())


@pytest.mark.slow
def test_soak_short(tmp_path: Path) -> None:
    soak(tmp_path, SHORT_SOAK_SECONDS)
