"""Group commit of key releases (group_commit.py): many releases in one transaction, each audited.

The app runs in process (httpx.ASGITransport) so the store can be held and made to fail on demand.
A group is made deterministic by holding the writer's first transaction until every other request
is queued behind it: the rest then commit as one group.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from modelseal.vault.server.admission import ReleaseGate, ReleaseSettings
from modelseal.vault.server.app import create_app
from modelseal.vault.server.audit import verify_audit
from modelseal.vault.server.callers import Principal
from modelseal.vault.server.devices import DeviceStore
from modelseal.vault.server.group_commit import GroupCommitter
from modelseal.vault.server.store import Store

from .release_helpers import Request, Sealed, build_request, local_vault, open_answer

DEVICES = 6


@dataclass
class Vault:
    store: Store
    admin: Principal
    app: Any
    gate: ReleaseGate
    sealed: Sealed
    devices: list[tuple[str, bytes]]
    data_key: bytes

    @property
    def committer(self) -> GroupCommitter:
        assert self.gate.committer is not None
        return self.gate.committer

    def requests(self, count: int) -> list[Request]:
        return [build_request(*self.devices[i % DEVICES], self.sealed) for i in range(count)]

    def releases(self) -> list[dict[str, Any]]:
        """Every key.release audit event, in chain order."""
        events = [r["event"] for r in self.store.audit_records(self.admin, limit=1000)]
        return [e for e in events if e["op"] == "key.release"]

    def uses(self) -> int:
        return int(DeviceStore(self.store).read_licence(self.admin, "l")["uses"])


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    local = local_vault(tmp_path)
    store, admin, devices, sealed = local.store, local.admin, local.devices, local.sealed
    psks = [(f"cam{i}", devices.create_device(admin, f"cam{i}", ["cams"])[1]) for i in range(DEVICES)]
    devices.put_policy(admin, "p", "k", [], ["cams"])
    devices.create_licence(admin, "l", "p", not_after=None, max_uses=1000, max_devices=DEVICES)
    app = create_app(store, release_settings=ReleaseSettings(max_inflight=1000, max_commit_queue=1000))
    gate = app.state.release_gate
    try:
        yield Vault(store, admin, app, gate, sealed, psks, local.data_key)
    finally:
        gate.close()
        store.engine.dispose()


def post_all(app: Any, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """All bodies at once, each on its own request, concurrently in one event loop."""

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="https://vault.test", timeout=60
        ) as client:
            return list(await asyncio.gather(*(client.post("/v1/release", json=b) for b in bodies)))

    return asyncio.run(go())


def post_grouped(vault: Vault, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """The first body alone, then all the others as ONE group: the writer's first transaction is
    held (its thread blocks, the event loop runs on) until every other release is queued."""
    store, committer = vault.store, vault.committer
    real_write = store.write_session
    release = threading.Event()
    held = [False]

    @contextmanager
    def write() -> Iterator[Session]:
        if threading.current_thread().name == "vault-group-commit" and not held[0]:
            held[0] = True
            release.wait(30)
        with real_write() as session:
            yield session

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=vault.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="https://vault.test", timeout=60
        ) as client:
            first = asyncio.create_task(client.post("/v1/release", json=bodies[0]))
            deadline = time.monotonic() + 30
            while committer.stats.batches == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.001)  # until the writer has taken the first, alone
            rest = [asyncio.create_task(client.post("/v1/release", json=b)) for b in bodies[1:]]
            while committer.depth < len(rest) and time.monotonic() < deadline:
                await asyncio.sleep(0.001)  # until all the others wait behind it
            release.set()
            return [await first, *[await task for task in rest]]

    store.write_session = write  # type: ignore[method-assign]
    try:
        return asyncio.run(go())
    finally:
        release.set()
        store.write_session = real_write  # type: ignore[method-assign]


def failing_commits(
    store: Store, fail: Callable[[int], bool]
) -> Callable[[], AbstractContextManager[Session]]:
    """A ``Store.write_session`` whose n-th transaction (1-based) on the writer thread fails at COMMIT
    when ``fail(n)``: SQLAlchemy runs its commit, the before_commit hook raises, it rolls back."""
    real_write = store.write_session
    count = [0]

    @contextmanager
    def write() -> Iterator[Session]:
        with real_write() as session:
            if threading.current_thread().name == "vault-group-commit":
                count[0] += 1
                if fail(count[0]):

                    def refuse(_: Session) -> None:
                        raise OSError("injected: disk I/O error at commit")

                    event.listen(session, "before_commit", refuse)
            yield session

    return write


def test_concurrent_releases_open_and_each_has_its_record_in_chain_order(vault: Vault) -> None:
    requests = vault.requests(40)
    answers = post_grouped(vault, [r.body for r in requests])
    assert [a.status_code for a in answers] == [200] * 40
    for request, answer in zip(requests, answers, strict=True):
        name = request.body["device"]
        assert open_answer(request, name, vault.sealed, answer.json()) == vault.data_key
    # One transaction for the first, one group for the 39 queued behind it.
    assert vault.committer.stats.largest_batch == 39
    assert vault.committer.stats.batches == 2

    records = vault.releases()
    assert [r["outcome"] for r in records] == ["released"] * 40
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(seqs) and len(set(seqs)) == 40
    assert verify_audit(vault.store.engine) >= 40
    # One record per request: each names its own nonce (as an HMAC), none twice.
    assert len({r["nonce_hmac"] for r in records}) == 40
    assert vault.uses() == 40


def test_a_nonce_replayed_inside_one_group_is_refused(vault: Vault) -> None:
    requests = vault.requests(10)
    bodies = [r.body for r in requests]
    bodies.insert(5, dict(bodies[2]))  # the same request twice, both queued into one group
    answers = post_grouped(vault, bodies)
    assert vault.committer.stats.largest_batch == 10  # everything after the first, together
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 10 and statuses.count(403) == 1
    assert sorted([statuses[2], statuses[5]]) == [200, 403]  # one of the twins, never both
    refused = answers[2] if statuses[2] == 403 else answers[5]
    assert refused.json()["error"]["code"] == "release_denied"
    outcomes = [r["outcome"] for r in vault.releases()]
    assert sorted(outcomes) == ["released"] * 10 + ["replay"]
    assert vault.uses() == 10


def test_a_failed_group_commit_answers_no_200(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    requests = vault.requests(12)
    # Every transaction of the writer fails: the group's and each single retry's.
    monkeypatch.setattr(vault.store, "write_session", failing_commits(vault.store, lambda n: n >= 2))
    answers = post_grouped(vault, [r.body for r in requests])
    statuses = [a.status_code for a in answers]
    assert statuses[0] == 200  # the first committed alone, before the failures began
    assert statuses[1:] == [503] * 11
    for answer in answers[1:]:
        assert answer.json()["error"]["code"] == "release_failed"
        assert "sealed" not in answer.json()
    assert vault.committer.stats.failed_batches == 1 and vault.committer.stats.retried == 11
    # Nothing of the failed group exists: one record, one use.
    assert [r["outcome"] for r in vault.releases()] == ["released"]
    assert vault.uses() == 1
    monkeypatch.undo()

    # Nor were their nonces consumed: the same requests now succeed, once each.
    again = post_all(vault.app, [r.body for r in requests[1:]])
    assert [a.status_code for a in again] == [200] * 11
    for request, answer in zip(requests[1:], again, strict=True):
        assert open_answer(request, request.body["device"], vault.sealed, answer.json()) == vault.data_key
    assert [a.status_code for a in post_all(vault.app, [requests[3].body])] == [403]
    assert verify_audit(vault.store.engine) > 0


def test_a_failed_group_is_retried_release_by_release(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    requests = vault.requests(12)
    # Only the group's transaction (the writer's 2nd) fails; each release is then retried alone.
    monkeypatch.setattr(vault.store, "write_session", failing_commits(vault.store, lambda n: n == 2))
    answers = post_grouped(vault, [r.body for r in requests])
    monkeypatch.undo()
    assert [a.status_code for a in answers] == [200] * 12
    for request, answer in zip(requests, answers, strict=True):
        assert open_answer(request, request.body["device"], vault.sealed, answer.json()) == vault.data_key
    stats = vault.committer.stats
    assert stats.failed_batches == 1 and stats.retried == 11
    # Every 200 has exactly one record: the failed group left none behind.
    records = vault.releases()
    assert [r["outcome"] for r in records] == ["released"] * 12
    assert len({r["nonce_hmac"] for r in records}) == 12
    assert vault.uses() == 12
    assert verify_audit(vault.store.engine) > 0


def test_a_release_that_fails_alone_does_not_sink_its_group(
    vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = vault.requests(8)
    victim = requests[4].body["nonce"]
    real_audit = vault.store.audit.record

    def audit(session: Session, domain: str, op: str, actor: str, **details: Any) -> None:
        # The audit record of one release can't be written (whatever the transaction).
        if op == "key.release" and details.get("nonce_hmac") == nonce_hmac:
            raise OSError("injected: audit write failed")
        real_audit(session, domain, op, actor, **details)

    import base64

    nonce_hmac = vault.store.secret_digest("release nonce", base64.b64decode(victim))
    monkeypatch.setattr(vault.store.audit, "record", audit)
    answers = post_grouped(vault, [r.body for r in requests])
    statuses = [a.status_code for a in answers]
    assert statuses == [200, 200, 200, 200, 503, 200, 200, 200]
    assert "sealed" not in answers[4].json()
    records = vault.releases()
    assert len(records) == 7 and all(r["nonce_hmac"] != nonce_hmac for r in records)
    assert vault.uses() == 7


def test_closed_committer_refuses_and_release_without_group_commit(tmp_path: Path, vault: Vault) -> None:
    # Each release alone (--no-group-commit): same answers, same records.
    app = create_app(vault.store, release_settings=ReleaseSettings(group_commit=False))
    requests = vault.requests(5)
    answers = post_all(app, [r.body for r in requests])
    assert [a.status_code for a in answers] == [200] * 5
    assert app.state.release_gate.committer is None
    assert len(vault.releases()) == 5

    vault.gate.close()
    answer = post_all(vault.app, [vault.requests(1)[0].body])[0]
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "shutting_down"
    assert json.loads(answer.content)["error"]["message"]
