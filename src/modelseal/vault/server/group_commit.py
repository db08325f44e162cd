"""Group commit of key releases: one writer thread, many releases per transaction.

Every release must commit its audit record before it is answered, and on SQLite (WAL,
synchronous=FULL) each commit is an fsync: committed one by one, releases are capped by the disk
and by writers queueing on the write lock. Here one writer thread takes every release queued when
its previous commit finished (under load after waiting ``window`` for more) and decides them in
ONE write transaction, in arrival order, with the same decision code as a single release
(``DeviceStore.commit_release``'s ``decide``): each gets its own audit record in the chain, written
in that transaction together with its effects (nonce, licence counters, failure count).

Nothing is answered before the commit that holds its record. If the group's transaction fails in
any way (an exception in one decision, the COMMIT itself), it is rolled back whole and each of its
releases is retried on its own through ``commit_release``; one that fails again is answered 503
(nothing released). A nonce replayed inside one group is refused like any replay: the second
decision reads the first one's nonce row in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from ..errors import Unavailable
from .device_rows import Decision, ReleaseDenied
from .devices import DeviceStore

Decide = Callable[[Session, float], Decision]
OnConflict = Callable[[], None]


class CommitQueueFull(Unavailable):
    """The writer is behind: more releases are queued than ``max_queue``. Answered 503 + Retry-After."""

    code = "commit_queue_full"

    def __init__(self) -> None:
        super().__init__("the vault is overloaded: too many releases are waiting to be committed")


@dataclass
class _Item:
    decide: Decide
    on_conflict: OnConflict
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[bytes]
    outcome: bytes | BaseException | None = None


@dataclass
class CommitStats:
    """Counters for tests and the benchmark (read without the lock: they only grow)."""

    batches: int = 0
    releases: int = 0
    largest_batch: int = 0
    failed_batches: int = 0
    retried: int = 0
    sizes: dict[int, int] = field(default_factory=dict)


class GroupCommitter:
    """Queue of pending releases and the one thread that commits them in groups."""

    def __init__(
        self,
        devices: DeviceStore,
        *,
        max_batch: int = 256,
        max_queue: int = 1024,
        window: float = 0.0,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or not 0 <= window <= 0.1:
            raise ValueError("max_batch and max_queue must be >= 1 and window within 0..0.1 s")
        self.devices = devices
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.window = window
        self.stats = CommitStats()
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def commit(self, decide: Decide, on_conflict: OnConflict) -> bytes:
        """The sealed file key once the release's group has committed; ReleaseDenied if refused.

        Raises CommitQueueFull at once (nothing queued, no database work) when the queue is full,
        and Unavailable when the committer is closed.
        """
        loop = asyncio.get_running_loop()
        item = _Item(decide, on_conflict, loop, loop.create_future())
        with self._cond:
            if self._closed:
                raise Unavailable("the vault is shutting down", code="shutting_down")
            if len(self._queue) >= self.max_queue:
                raise CommitQueueFull()
            self._queue.append(item)
            if self._thread is None:
                # Started on first use: an app built and never served (tests, `init`) costs no thread.
                self._thread = threading.Thread(target=self._run, name="vault-group-commit", daemon=True)
                self._thread.start()
            self._cond.notify()
        # A cancelled caller cancels only its future: once queued, the release is still decided
        # and committed with its group (the writer skips futures that are already done).
        return await item.future

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking releases; the thread commits what is queued, then ends."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # --- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        last = 0
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
            if self.window and last > 1:
                # Under load (the last group had company) trade ``window`` of latency for larger
                # groups: fewer commits, and the event loop runs undisturbed meanwhile. A lone
                # caller (the last group was one release) is not made to wait.
                time.sleep(self.window)
            with self._cond:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch))]
            last = len(batch)
            try:
                self._commit(batch)
            except BaseException as e:  # never leave a caller waiting forever
                for item in batch:
                    if item.outcome is None:
                        item.outcome = e
            self._deliver(batch)

    def _commit(self, batch: list[_Item]) -> None:
        stats = self.stats
        stats.batches += 1
        stats.releases += len(batch)
        stats.largest_batch = max(stats.largest_batch, len(batch))
        stats.sizes[len(batch)] = stats.sizes.get(len(batch), 0) + 1
        decisions: list[Decision] = []
        try:
            with self.devices.store.write_batch() as session:
                for item in batch:
                    decisions.append(item.decide(session, time.time()))
        except Exception:
            # Rolled back whole: no record and no effect of this group exists. Each release gets a
            # fresh decision in a transaction of its own, so one bad release can't sink the others.
            stats.failed_batches += 1
            stats.retried += len(batch)
            for item in batch:
                try:
                    item.outcome = self.devices.releases.commit_release(item.decide, item.on_conflict)
                except Exception as e:
                    item.outcome = e
            return
        for item, decision in zip(batch, decisions, strict=True):
            item.outcome = decision.sealed if decision.sealed is not None else ReleaseDenied()

    @staticmethod
    def _deliver(batch: list[_Item]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
        for item in batch:
            by_loop.setdefault(item.loop, []).append(item)
        for loop, items in by_loop.items():
            # One wake-up per loop and group, not one per release; a closed loop's callers are gone.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, items)


def _resolve(items: list[_Item]) -> None:
    for item in items:
        if item.future.done():
            continue
        if isinstance(item.outcome, bytes):
            item.future.set_result(item.outcome)
        elif isinstance(item.outcome, BaseException):
            item.future.set_exception(item.outcome)
        else:
            item.future.set_exception(Unavailable("the release was not committed", code="release_failed"))
