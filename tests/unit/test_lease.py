"""LeaseKeeper: refusals end the lease at once; an unreachable service only after the grace."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

import modelseal
from modelseal.errors import ModelSealError
from modelseal.format.header import Stanza
from modelseal.lease import LeaseKeeper, LeasePolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def keeper(answers: list[object], grace: float = 60.0) -> tuple[LeaseKeeper, list[str], Clock]:
    lost: list[str] = []
    clock = Clock()

    def check() -> str | None:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer if isinstance(answer, str) else None

    return LeaseKeeper(check, LeasePolicy(interval=1, grace=grace), lost.append, clock=clock), lost, clock


def test_a_refusal_loses_the_lease_once() -> None:
    k, lost, _ = keeper([None, "device revoked"])
    assert k.check_now() is True
    assert k.check_now() is False
    assert lost == ["device revoked"] and k.lost == "device revoked"
    assert k.check_now() is False and lost == ["device revoked"]  # on_lost is called once


def test_an_unreachable_service_is_tolerated_for_the_grace_period_only() -> None:
    down = ModelSealError("cannot reach the vault")
    k, lost, clock = keeper([None, down, down, None, down, down], grace=60)
    assert k.check_now()
    clock.now += 59
    assert k.check_now() and not lost  # 59 s since the last good answer
    clock.now += 2
    assert k.check_now() is False  # 61 s: fail closed
    assert lost and "could not be reached for over 60 s" in lost[0]


def test_a_good_answer_restarts_the_grace_period() -> None:
    down = ModelSealError("cannot reach the vault")
    k, lost, clock = keeper([down, None, down], grace=10)
    clock.now += 5
    assert k.check_now()
    clock.now += 5
    assert k.check_now()  # good answer at t+10
    clock.now += 9
    assert k.check_now() and not lost


def test_the_thread_checks_at_the_interval_and_stops() -> None:
    calls = threading.Event()
    count = [0]

    def check() -> str | None:
        count[0] += 1
        if count[0] >= 3:
            calls.set()
        return None

    k = LeaseKeeper(check, LeasePolicy(interval=0.02, grace=1), lambda _: None).start()
    assert calls.wait(5)
    k.stop()
    seen = count[0]
    threading.Event().wait(0.1)
    assert count[0] == seen


def test_policy_bounds() -> None:
    with pytest.raises(ValueError):
        LeasePolicy(interval=0)
    with pytest.raises(ValueError):
        LeasePolicy(grace=-1)


class LeasedKey:
    """A MEK identity with a lease whose verdict the test sets."""

    def __init__(self, mek: modelseal.MEK) -> None:
        self.mek = mek
        self.verdict: str | None = None

    def unwrap(self, stanzas: Sequence[Stanza]) -> Iterator[bytes]:
        return self.mek.unwrap(stanzas)

    def lease_check(self) -> Callable[[], str | None]:
        return lambda: self.verdict


def test_keep_lease_revokes_the_model(tmp_path: Path) -> None:
    (tmp_path / "m.bin").write_bytes(b"weights" * 1000)
    mek = modelseal.MEK(modelseal.keygen())
    modelseal.seal(tmp_path / "m.bin", tmp_path / "m.mseal", mek=mek)
    identity = LeasedKey(mek)
    model = modelseal.open(tmp_path / "m.mseal", identity)
    k = modelseal.keep_lease(model, identity, LeasePolicy(interval=0.02, grace=1))
    assert k is not None
    assert bytes(model.read()) == b"weights" * 1000
    identity.verdict = "licence ended"
    for _ in range(250):
        if model.revoked:
            break
        threading.Event().wait(0.02)
    k.stop()
    assert model.revoked == "licence ended" and model.closed
    with pytest.raises(modelseal.LeaseLostError, match="licence ended"):
        model.read()
    assert modelseal.keep_lease(model, mek) is None  # a plain key has no lease


@pytest.mark.faults
def test_a_black_holed_service_cannot_stretch_the_grace() -> None:
    """A check that hangs (packets swallowed: the client waits its whole timeout) gets only the grace
    left. Before, 6 s of grace lasted 30.7 s, the HTTP client's timeout."""
    import time

    released = threading.Event()
    lost: list[str] = []

    def hang() -> str | None:
        released.wait(30)
        return None

    k = LeaseKeeper(hang, LeasePolicy(interval=0.2, grace=1.0), lost.append)
    started = time.monotonic()
    assert k.check_now() is True or k.lost is not None  # the first check already waits out the grace
    while k.lost is None and time.monotonic() - started < 10:
        k.check_now()
    took = time.monotonic() - started
    released.set()
    assert lost and "could not be reached for over 1 s" in lost[0] and "grace left" in lost[0]
    assert took < 3, f"the lease held {took:.1f} s on 1 s of grace"
