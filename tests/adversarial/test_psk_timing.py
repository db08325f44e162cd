"""No oracle on PSK releases: an unknown device, a known device with a wrong PSK and a revoked
device get the same refusal, in the same time.

The refusal bytes (status, body, headers) are compared on every sample here; a real server's are in
tests/vault/test_release.py::test_refusals_are_byte_identical. The time is the vault's own
processing time, measured in process (the app on httpx.ASGITransport, time.perf_counter_ns around
each call), so no network jitter hides a difference and none is added.

Timing in a pass/fail test: the project's rule keeps speed out of unit tests, and this is not a
speed test but a security property, asserted so that it can't flake:
- the three kinds are sampled interleaved, in a shuffled order each round, so whatever the machine
  is doing (CPU frequency, other processes, a slow fsync) falls on all three alike;
- the statistic is the median of 300 samples each (after 20 rounds of warm-up), which ignores the
  tail of slow fsyncs and scheduler stalls;
- the bound is generous: no kind's median may exceed another's by more than half (work of more
  than half a median request done by one branch only is seen). An oracle worth the name (a database
  read, a key derivation, a sleep that only one branch does) costs about a whole request and fails
  it; ``test_the_timing_check_catches_a_planted_oracle`` plants one costing two median requests (so
  that the machine getting twice as slow meanwhile still can't hide it) and requires the check to
  see it. A difference of a few percent (a smaller audit record, one more indexed read) passes;
  such residuals are listed below.
- no retry: one run decides.
Work that costs microseconds (the HMAC, the barrier decryption) can't be told apart by timing
against a millisecond request, so it is counted instead: each refusal must do exactly one PSK
decryption and one HMAC, unknown devices included (against a dummy PSK).

Rows are compared exactly: an unknown name, a wrong PSK and a revoked device each write one failure
(INSERT + DELETE on auth_failures, keyed by the claimed names) and one audit record
(``test_every_refusal_writes_the_same_rows``). This suite found that a wrong PSK once wrote its
failure where the others did not (~140 us, 8-10 % of the median request).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from vault.release_helpers import LocalVault, Request, build_request, local_vault

from modelseal.keyrelease import wire
from modelseal.vault.server.app import create_app
from modelseal.vault.server.http_common import parse_release
from modelseal.vault.server.release import FAILURE_SWEEP_SECONDS, LOCKOUT_WINDOW_SECONDS, ReleaseDecider
from modelseal.vault.server.schema import AuthFailure

from .vault_inproc import StorageFaults, asgi_client

KINDS = ("unknown device", "wrong psk", "revoked device")
SAMPLES = 300
WARMUP = 20
# No kind's median may exceed another's by more than this factor (see the module docstring).
MAX_MEDIAN_RATIO = 1.5


@dataclass
class Setup:
    local: LocalVault
    known_psk: bytes
    revoked_psk: bytes

    def request(self, kind: str, i: int) -> Request:
        sealed = self.local.sealed
        if kind == "unknown device":
            # A fresh unknown name each time (an attacker probing ids), with a real PSK's MAC.
            return build_request(f"nobody-{i}", self.known_psk, sealed)
        if kind == "wrong psk":
            return build_request("known", bytes(32), sealed)
        return build_request("revoked", self.revoked_psk, sealed)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    local = local_vault(tmp_path)
    _, known = local.devices.create_device(local.admin, "known", ["cams"])
    _, revoked = local.devices.create_device(local.admin, "revoked", ["cams"])
    local.devices.put_policy(local.admin, "p", "k", [], ["cams"])
    local.devices.revoke_device(local.admin, "revoked")
    try:
        yield Setup(local, known, revoked)
    finally:
        local.store.engine.dispose()


Shape = tuple[int, bytes, tuple[tuple[str, str], ...]]


def sample(setup: Setup, rounds: int, seed: int) -> tuple[dict[str, list[int]], set[Shape]]:
    """Release time (ns) per kind over ``rounds`` shuffled rounds, and every refusal's shape."""
    app = create_app(setup.local.store)
    order = random.Random(seed)
    times: dict[str, list[int]] = {kind: [] for kind in KINDS}
    shapes: set[Shape] = set()

    async def go() -> None:
        async with asgi_client(app) as client:
            for i in range(WARMUP + rounds):
                kinds = list(KINDS)
                order.shuffle(kinds)
                for kind in kinds:
                    body = setup.request(kind, i).body  # built outside the timed span
                    start = time.perf_counter_ns()
                    answer = await client.post("/v1/release", json=body)
                    elapsed = time.perf_counter_ns() - start
                    headers = tuple(sorted((k, v) for k, v in answer.headers.items() if k != "date"))
                    shapes.add((answer.status_code, answer.content, headers))
                    if i >= WARMUP:
                        times[kind].append(elapsed)

    try:
        asyncio.run(go())
    finally:
        app.state.release_gate.close()
    return times, shapes


def medians(times: dict[str, list[int]]) -> dict[str, float]:
    return {kind: statistics.median(values) for kind, values in times.items()}


def distinguishable(times: dict[str, list[int]]) -> bool:
    found = medians(times)
    return max(found.values()) > MAX_MEDIAN_RATIO * min(found.values())


def test_refusals_are_identical_and_take_the_same_time(setup: Setup) -> None:
    times, shapes = sample(setup, SAMPLES, seed=1)
    assert len(shapes) == 1, f"refusals differ by kind: {shapes}"
    status, content, _ = next(iter(shapes))
    assert status == 403 and b"release_denied" in content
    assert all(len(values) == SAMPLES for values in times.values())
    found = medians(times)
    report = ", ".join(f"{kind} {m / 1e3:.0f} us" for kind, m in found.items())
    assert not distinguishable(times), f"median release time differs by kind: {report}"
    # The refusals were real decisions: every one is audited, none released anything.
    records = [
        r["event"]
        for r in setup.local.store.audit_records(setup.local.admin, limit=1000)
        if r["event"]["op"] == "key.release"
    ]
    outcomes = Counter(r["outcome"] for r in records)
    assert "released" not in outcomes
    assert {"unknown_device", "revoked", "bad_mac"} <= set(outcomes)


def test_the_timing_check_catches_a_planted_oracle(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above has the power to fail: one branch made to cost two median requests more."""
    honest, _ = sample(setup, 60, seed=2)
    extra = 2 * statistics.median([t for values in honest.values() for t in values]) / 1e9
    real = ReleaseDecider.find_device

    def slow_for_unknown_devices(
        self: ReleaseDecider, session: Any, domain: str, name: str
    ) -> tuple[int | None, Any]:
        found = real(self, session, domain, name)
        if found[1] is None:
            time.sleep(extra)  # as a slow extra query that only the unknown branch made would
        return found

    monkeypatch.setattr(ReleaseDecider, "find_device", slow_for_unknown_devices)
    times, shapes = sample(setup, SAMPLES, seed=3)
    assert len(shapes) == 1  # the bytes are still identical: only the time tells
    found = medians(times)
    assert distinguishable(times), f"a planted oracle went unseen: {found}"
    assert max(found, key=lambda kind: found[kind]) == "unknown device"


def counting(monkeypatch: pytest.MonkeyPatch, setup: Setup) -> tuple[list[str], list[str]]:
    """Calls of the PSK's HMAC and of the barrier's decryption of a PSK, by purpose."""
    macs: list[str] = []
    decrypts: list[str] = []
    real_mac: Callable[[bytes, bytes], bytes] = wire.mac
    barrier = setup.local.store.barrier
    real_decrypt = barrier.decrypt

    def mac(key: bytes, data: bytes) -> bytes:
        macs.append("mac")
        return real_mac(key, data)

    def decrypt(blob: bytes, **where: Any) -> bytes:
        decrypts.append(str(where.get("purpose")))
        return real_decrypt(blob, **where)

    monkeypatch.setattr(wire, "mac", mac)
    monkeypatch.setattr(barrier, "decrypt", decrypt)
    return macs, decrypts


def test_every_refusal_does_the_psk_work(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """Microsecond work can't be timed against a request: count it. One PSK decryption and one HMAC
    per refusal, whichever the reason (an unknown device's against a dummy PSK)."""
    macs, decrypts = counting(monkeypatch, setup)
    devices = setup.local.devices
    for i, kind in enumerate(KINDS * 3):
        request = parse_release(json.dumps(setup.request(kind, i).body).encode())  # its own MAC
        macs.clear()
        decrypts.clear()
        with pytest.raises(Exception, match="key release refused"):
            devices.releases.release(request)
        assert (len(macs), decrypts) == (1, ["psk"]), kind


def statements_by_kind(setup: Setup) -> dict[str, list[str]]:
    """The write statements (verb and table) of one refusal of each kind, as the database got them
    (at the DBAPI cursor: the release's statements don't all go through SQLAlchemy's events)."""
    log: list[str] = []
    tap = StorageFaults(setup.local.store.engine, rate=0.0, log=log)
    found: dict[str, list[str]] = {}
    try:
        for i, kind in enumerate(KINDS):
            request = parse_release(json.dumps(setup.request(kind, i).body).encode())
            log.clear()
            with pytest.raises(Exception, match="key release refused"):
                setup.local.devices.releases.release(request)
            written = []
            for statement in log:
                words = statement.replace('"', "").split()
                verb = words[0].upper()
                if verb in ("INSERT", "UPDATE", "DELETE"):
                    written.append(f"{verb} {words[1] if verb == 'UPDATE' else words[2]}")
            found[kind] = sorted(written)
    finally:
        tap.remove()
    return found


def test_every_refusal_writes_its_audit_record(setup: Setup) -> None:
    found = statements_by_kind(setup)
    for kind, writes in found.items():
        assert writes.count("INSERT audit") == 1, (kind, writes)


def test_every_refusal_writes_the_same_rows(setup: Setup) -> None:
    found = statements_by_kind(setup)
    assert len({tuple(writes) for writes in found.values()}) == 1, found


def test_failures_of_names_nobody_owns_are_swept(setup: Setup) -> None:
    """Unknown names get failure rows too; rows older than the lockout window do not pile up."""
    devices = setup.local.devices
    now = time.time()
    stale = devices.releases.failure_subject(None, "nowhere", "ghost")
    fresh = devices.releases.failure_subject(None, "nowhere", "ghost-2")
    with setup.local.store.write_session() as session:
        for _ in range(5):
            devices.releases.count_failure(session, stale, now - LOCKOUT_WINDOW_SECONDS - 60)
        assert devices.releases.recent_failures(session, stale, now - LOCKOUT_WINDOW_SECONDS - 30) == 5
        devices.releases._failures_swept = -FAILURE_SWEEP_SECONDS  # the sweep is due
        devices.releases.count_failure(session, fresh, now)
        remaining = session.execute(select(func.count(AuthFailure.id))).scalar()
    assert remaining == 1  # only the fresh failure: the stale name's rows went with the sweep
