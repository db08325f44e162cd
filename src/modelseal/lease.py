"""Leases: an open model keeps working only while the key service still says it may.

A model opened through key release (a device identity) is re-checked every ``interval`` seconds,
like OVSA's licence re-check. When the service answers that the device was revoked or its licence
ended, the lease is lost at once; when the service cannot be reached, the model keeps working for
``grace`` seconds after the last good answer, then the lease is lost too (fail closed). Losing a
lease calls ``on_lost(reason)`` once: the model is zeroized, a Crypto-fs mount unmounts, a
``cfs run`` child is stopped.

This module knows no key service: a lease is a ``check`` callable that returns None while valid,
returns the reason when the service refused, and raises ModelSealError when it could not ask.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .errors import LeaseLostError, ModelSealError

Check = Callable[[], "str | None"]
OnLost = Callable[[str], None]
# A check may take as long as it likes while more grace than this is left (the client's own
# timeouts bound it); below, it gets the grace left, plus this for an answer already on its way.
_UNBOUNDED = 60.0
_ANSWER_SLACK = 0.5


class LeaseCheckTimeout(ModelSealError):
    """A lease re-check that did not answer within the grace left (treated as unreachable)."""


@dataclass(frozen=True)
class LeasePolicy:
    """How often to re-check (seconds) and how long an unreachable service is tolerated."""

    interval: float = 300.0
    grace: float = 900.0

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.grace < 0:
            raise ValueError("the lease interval must be positive and the grace not negative")


class LeaseKeeper:
    """Runs ``check`` every ``policy.interval`` seconds in a daemon thread until stopped or lost."""

    def __init__(
        self,
        check: Check,
        policy: LeasePolicy,
        on_lost: OnLost,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self.policy = policy
        self._on_lost = on_lost
        self._clock = clock
        self._last_ok = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None
        self.checks = 0

    def check_now(self) -> bool:
        """One re-check; True while the lease holds. Calls ``on_lost`` (once) when it does not."""
        if self.lost is not None:
            return False
        self.checks += 1
        try:
            refused = self._bounded_check()
        except ModelSealError as e:
            # Not an answer: the service may only be unreachable. Tolerate it for the grace period.
            if self._clock() - self._last_ok <= self.policy.grace:
                return True
            grace = self.policy.grace
            refused = f"the key service could not be reached for over {grace:g} s ({e.diagnostic})"
        if refused is None:
            self._last_ok = self._clock()
            return True
        self.lost = refused
        self._on_lost(refused)
        return False

    def _bounded_check(self) -> str | None:
        """``check``, given no longer than the grace left: a vault that swallows packets would
        otherwise stretch the grace by the client's whole timeout (6 s of grace took 30.7 s)."""
        left = self.policy.grace - (self._clock() - self._last_ok)
        if left >= _UNBOUNDED:
            return self._check()
        outcome: list[str | BaseException | None] = []
        done = threading.Event()

        def ask() -> None:
            try:
                outcome.append(self._check())
            except BaseException as e:  # handed to the keeper's thread below
                outcome.append(e)
            done.set()

        threading.Thread(target=ask, name="modelseal-lease-check", daemon=True).start()
        if not done.wait(max(left, 0.0) + _ANSWER_SLACK):
            raise LeaseCheckTimeout(f"no answer within the {max(left, 0.0):.1f} s of grace left")
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _run(self) -> None:
        while not self._stop.wait(self.policy.interval):
            if not self.check_now():
                return

    def start(self) -> LeaseKeeper:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="modelseal-lease", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


@runtime_checkable
class Leasing(Protocol):
    """An identity whose keys come with a lease (the vault's DeviceIdentity)."""

    def lease_check(self) -> Check: ...


def keepers(identities: Iterable[object], policy: LeasePolicy, on_lost: OnLost) -> list[LeaseKeeper]:
    """Started keepers for every leasing identity among ``identities`` (none for plain keys)."""
    return [
        LeaseKeeper(i.lease_check(), policy, on_lost).start() for i in identities if isinstance(i, Leasing)
    ]


def keep_lease(model: object, identity: object, policy: LeasePolicy | None = None) -> LeaseKeeper | None:
    """Re-check ``identity``'s lease for an open ``model``; on loss the model is revoked (zeroized).

    Returns the started keeper (``stop()`` it when closing the model), or None when the identity
    has no lease (a MEK or an X25519 key: nothing to re-check).
    """
    if not isinstance(identity, Leasing):
        return None
    revoke = getattr(model, "revoke", None)
    if not callable(revoke):
        raise TypeError("keep_lease needs a model opened by modelseal.open")
    return LeaseKeeper(identity.lease_check(), policy or LeasePolicy(), revoke).start()


class LeasedHandle:
    """A runtime's handle (an ONNX Runtime session, an OpenVINO compiled model, a torch module)
    that works while the lease holds and refuses every use once it is lost.

    Runtimes keep their own copy of the weights, which modelseal cannot zeroize; losing the lease
    drops this wrapper's reference (the runtime frees them once nothing else holds the handle) and
    every later attribute access — ``run``, ``infer``, ``__call__`` via ``.forward`` — raises
    LeaseLostError. Keep only the wrapper, not the handle itself, for revocation to bite.
    """

    __slots__ = ("_keeper", "_reason", "_target")

    def __init__(self, target: object, identity: object, policy: LeasePolicy | None = None) -> None:
        self._target: object | None = target
        self._reason: str | None = None
        self._keeper: LeaseKeeper | None = None
        if isinstance(identity, Leasing):
            self._keeper = LeaseKeeper(identity.lease_check(), policy or LeasePolicy(), self._lose).start()

    def _lose(self, reason: str) -> None:
        self._reason = reason
        self._target = None

    @property
    def lease_lost(self) -> str | None:
        return self._reason

    def __getattr__(self, name: str) -> Any:
        target = self._target
        if target is None:
            raise LeaseLostError(f"the model was closed because its lease ended: {self._reason}")
        return getattr(target, name)

    def __call__(self, *args: object, **kwargs: object) -> Any:
        return self.__getattr__("__call__")(*args, **kwargs)

    def close(self) -> None:
        """Stop re-checking and drop the handle."""
        if self._keeper is not None:
            self._keeper.stop()
        self._target = None
