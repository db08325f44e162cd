"""Revocation under load: once `revoke` has answered, the device gets nothing more, at once.

A real `vault serve` (TLS on loopback) takes releases from many concurrent releasers, several per
device, for one device group; one device is revoked in the middle of the stream. Then:
- every release of that device *sent* after the revoke call returned is refused (403), and there
  were releases of it just before (the revocation changed something);
- the other devices are never refused or failed (every one of their answers is a 200, before and
  after), and kept being served after the revocation;
- in the audit chain (the commit order: writers are serialised), the revoked device has no
  `released` record after its `device.revoke` record, only `revoked` refusals; its `released`
  records are exactly its 200 answers and its refusals exactly its 403s; the chain verifies.
The slow variant revokes three devices one after another, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from vault.conftest import (
    VaultServer,
    postgres,  # noqa: F401 - the session fixture, for the postgresql case
    start_server,
    stop_server,
)
from vault.postgres import PostgresServer
from vault.release_helpers import device, seal_model, unique

from .vault_load import Answer, Load, audit_events

DEVICES = 6
PER_DEVICE = 2  # releaser threads per device


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VaultServer]:
    backend = getattr(request, "param", "sqlite")
    url, pg = None, None
    if backend == "postgresql":
        pg = request.getfixturevalue("postgres")
        assert isinstance(pg, PostgresServer)
        url = pg.create_database()
    started = start_server(tmp_path, url)
    try:
        yield started
    finally:
        stop_server(started)
        if pg is not None and url is not None:
            pg.drop_database(url)


def served(answers: list[Answer], name: str) -> int:
    return sum(a.device == name and a.status == 200 for a in answers)


def sent_after(answers: list[Answer], name: str, moment: float) -> int:
    return sum(a.device == name and a.sent > moment for a in answers)


def revoke_under_load(server: VaultServer, tmp_path: Path, victims: int, settle: int) -> None:
    key = unique("k")
    sealed = seal_model(server, key, tmp_path)
    fleet = [device(server, ["fleet"]) for _ in range(DEVICES)]
    with server.client() as admin:
        admin.put_policy(unique("p"), key, groups=["fleet"])
    load = Load(server, sealed)
    revoked: dict[str, tuple[float, float]] = {}  # device: (revoke called, revoke returned)
    try:
        load.start(fleet, PER_DEVICE)
        for victim, _ in fleet[:victims]:
            # Until the victim has just been served `settle` more times (the stream is running).
            base = served(load.snapshot(), victim)
            load.wait_until(lambda answers: served(answers, victim) >= base + settle)  # noqa: B023
            with server.client() as admin:
                called = time.monotonic()
                assert admin.revoke_device(victim)["revoked"] is True
                returned = time.monotonic()
            revoked[victim] = (called, returned)
            # ...and then until every device has been answered `settle` more times on requests sent
            # after the revoke returned (the victim's: refusals).
            load.wait_until(
                lambda answers: all(
                    sent_after(answers, name, returned) >= settle  # noqa: B023
                    for name, _ in fleet
                )
            )
    finally:
        load.finish()
    assert not load.problems, load.problems[:5]
    check(server, load.answers, [name for name, _ in fleet], revoked)
    print(f"{len(load.answers)} releases, {Counter(a.status for a in load.answers)}")


def check(
    server: VaultServer, answers: list[Answer], fleet: list[str], revoked: dict[str, tuple[float, float]]
) -> None:
    statuses = {name: Counter(a.status for a in answers if a.device == name) for name in fleet}
    for name in fleet:
        mine = [a for a in answers if a.device == name]
        if name not in revoked:
            assert statuses[name] == Counter({200: len(mine)}), (name, statuses[name])
            continue
        called, returned = revoked[name]
        before = [a for a in mine if a.done < called]
        after = [a for a in mine if a.sent > returned]
        assert before and all(a.status == 200 for a in before), statuses[name]
        late = [a for a in after if a.status != 403]
        assert not late, f"{len(late)} releases of {name} sent after its revoke returned got {late[:3]}"
        assert set(statuses[name]) <= {200, 403}, statuses[name]
    # The others kept being served after the last revocation.
    last = max(returned for _, returned in revoked.values())
    for name in fleet:
        if name not in revoked:
            assert sum(a.sent > last for a in answers if a.device == name) > 0

    events = list(audit_events(server))
    seq_of_revoke = {
        e["device"]: e["seq"] for e in events if e["op"] == "device.revoke" and e.get("device") in revoked
    }
    assert set(seq_of_revoke) == set(revoked)
    outcomes: dict[str, Counter[str]] = {name: Counter() for name in fleet}
    for e in events:
        if e["op"] != "key.release" or e.get("device") not in outcomes:
            continue
        outcomes[e["device"]][e["outcome"]] += 1
        cut = seq_of_revoke.get(e["device"])
        if cut is not None:
            expected = "released" if e["seq"] < cut else "revoked"
            assert e["outcome"] == expected, (
                f"{e['device']}: {e['outcome']} at seq {e['seq']}, revoked at {cut}"
            )
    for name in fleet:
        # One record per answer: a release is answered 200 only with its `released` record.
        assert outcomes[name]["released"] == statuses[name][200], (name, outcomes[name], statuses[name])
        assert outcomes[name]["revoked"] == statuses[name][403], (name, outcomes[name], statuses[name])
    with server.client() as admin:
        assert admin.verify_audit()["records"] >= len(events)


def test_revocation_under_load(server: VaultServer, tmp_path: Path) -> None:
    revoke_under_load(server, tmp_path, victims=1, settle=100)


@pytest.mark.slow
@pytest.mark.parametrize("server", ["sqlite", "postgresql"], indirect=True)
def test_revocation_under_load_long(server: VaultServer, tmp_path: Path) -> None:
    revoke_under_load(server, tmp_path, victims=3, settle=300)
