"""Release load on a real `vault serve`: threads of devices asking for a key, every answer recorded.

Each releaser thread keeps one TLS connection (a device's keep-alive client), builds a fresh release
request (new nonce and ephemeral key) for each call, checks that a 200 opens to the data key, and
records when the request was sent and answered (time.monotonic), with its status.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from vault.conftest import VaultServer, tls_context
from vault.release_helpers import Sealed, build_request, open_answer


@dataclass(frozen=True)
class Answer:
    device: str
    sent: float
    done: float
    status: int


@dataclass
class Load:
    server: VaultServer
    sealed: Sealed
    answers: list[Answer] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, devices: list[tuple[str, bytes]], per_device: int = 1) -> None:
        for name, psk in devices * per_device:
            thread = threading.Thread(target=self._run, args=(name, psk), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _run(self, name: str, psk: bytes) -> None:
        url = f"{self.server.url}/v1/release"
        try:
            with httpx.Client(verify=tls_context(self.server), timeout=30) as client:
                while not self.stop.is_set():
                    request = build_request(name, psk, self.sealed)
                    sent = time.monotonic()
                    answer = client.post(url, json=request.body)
                    done = time.monotonic()
                    if answer.status_code == 200:
                        key = open_answer(request, name, self.sealed, answer.json())
                        if key != self.sealed.recipient.data_key:
                            self.problem(f"{name}: a release opened to the wrong key")
                    with self.lock:
                        self.answers.append(Answer(name, sent, done, answer.status_code))
        except Exception as e:  # recorded: the test fails on it, with the reason
            self.problem(f"{name}: {type(e).__name__}: {e}")

    def problem(self, what: str) -> None:
        with self.lock:
            self.problems.append(what)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in self.threads), "a releaser hangs"

    def snapshot(self) -> list[Answer]:
        with self.lock:
            return list(self.answers)

    def wait_until(self, condition: Callable[[list[Answer]], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self.snapshot()):
            assert not self.problems, self.problems[:3]
            assert time.monotonic() < deadline, "the release load made no progress"
            time.sleep(0.02)


def audit_events(server: VaultServer) -> Iterator[dict[str, Any]]:
    """Every audit record of the default domain, in chain order (the admin API, 1,000 a page)."""
    after = 0
    with server.client() as admin:
        while True:
            page = admin.audit(after=after, limit=1000)
            for record in page:
                yield dict(record["event"])
            if len(page) < 1000:
                return
            after = int(page[-1]["seq"])
