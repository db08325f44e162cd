"""Admission of key releases: a bounded number in flight, and quick answers when over capacity.

Past ``max_inflight`` releases in flight (per vault process), a release is answered 429 with
Retry-After at once: its body is not read, nothing touches the database. When the group
committer's queue is deeper than ``max_commit_queue`` (the storage is behind), 503 with
Retry-After. Either way the process keeps serving: the releases already admitted finish, health
answers, and callers come back after Retry-After.

Both release routes (PSK and attestation) go through one gate, so the limit is on releases, not
per route. The counter is touched only on the event loop's thread: no lock.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ...service.http import NO_STORE
from .devices import DeviceStore
from .group_commit import CommitQueueFull, Decide, GroupCommitter, OnConflict

DEFAULT_MAX_INFLIGHT = 256
DEFAULT_MAX_COMMIT_QUEUE = 128
BUSY_RETRY_AFTER = "1"
Endpoint = Callable[[Request], Awaitable[Response]]

_BUSY_BODY = json.dumps(
    {"error": {"code": "too_many_requests", "message": "too many key releases in flight; retry later"}},
    separators=(",", ":"),
).encode()


@dataclass(frozen=True)
class ReleaseSettings:
    """`vault serve --max-inflight/--max-commit-queue/--commit-window/--no-group-commit`."""

    max_inflight: int = DEFAULT_MAX_INFLIGHT
    max_commit_queue: int = DEFAULT_MAX_COMMIT_QUEUE
    group_commit: bool = True
    # Seconds the writer waits for more releases before a group. 1 ms measured best on 2 cores
    # (docs/benchmarks.md): larger groups, and the event loop runs undisturbed meanwhile.
    commit_window: float = 0.001

    def __post_init__(self) -> None:
        if self.max_inflight < 1 or self.max_commit_queue < 1:
            raise ValueError("--max-inflight and --max-commit-queue must be at least 1")
        if not 0 <= self.commit_window <= 0.1:
            raise ValueError("--commit-window must be within 0..100 ms")


def _busy() -> Response:
    headers = {**NO_STORE, "Retry-After": BUSY_RETRY_AFTER}
    return Response(_BUSY_BODY, 429, headers=headers, media_type="application/json")


def queue_full_response(error: CommitQueueFull) -> Response:
    body = json.dumps({"error": {"code": error.code, "message": error.message}}, separators=(",", ":"))
    headers = {**NO_STORE, "Retry-After": BUSY_RETRY_AFTER}
    return Response(body, 503, headers=headers, media_type="application/json")


class ReleaseGate:
    """In-flight limit around the release routes, and the way each release is committed."""

    def __init__(self, devices: DeviceStore, settings: ReleaseSettings | None = None) -> None:
        self.settings = settings or ReleaseSettings()
        self.devices = devices
        self.inflight = 0
        self.refused_busy = 0
        self.committer: GroupCommitter | None = None
        if self.settings.group_commit:
            self.committer = GroupCommitter(
                devices, max_queue=self.settings.max_commit_queue, window=self.settings.commit_window
            )

    def guard(self, endpoint: Endpoint) -> Endpoint:
        """``endpoint`` behind the in-flight limit: over it, 429 + Retry-After before any work."""
        limit = self.settings.max_inflight

        async def guarded(request: Request) -> Response:
            if self.inflight >= limit:
                self.refused_busy += 1
                return _busy()
            self.inflight += 1
            try:
                return await endpoint(request)
            finally:
                self.inflight -= 1

        return guarded

    async def release(self, decide: Decide, on_conflict: OnConflict) -> bytes:
        """Commit one release decision (grouped, or alone in the thread pool); the sealed key."""
        if self.committer is not None:
            return await self.committer.commit(decide, on_conflict)
        return await run_in_threadpool(self.devices.releases.commit_release, decide, on_conflict)

    def close(self) -> None:
        if self.committer is not None:
            self.committer.close()
