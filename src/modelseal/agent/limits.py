"""Per-caller request rate limits for the agent: token buckets, refused work costs nothing upstream.

A caller is what the agent can tell apart without trusting it: the device name a request claims
plus where it came from. A flood under made-up device names still hits the global bucket, so the
vault behind never sees more than the agent's total rate.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """``rate`` requests per second per caller with bursts of ``burst``; ``total`` for all callers."""

    def __init__(self, rate: float, burst: int, total: float, *, max_callers: int = 4096) -> None:
        if rate <= 0 or burst < 1 or total <= 0:
            raise ValueError("rates must be positive and the burst at least 1")
        self.rate, self.burst, self.total = rate, burst, total
        self._callers: OrderedDict[str, _Bucket] = OrderedDict()
        self._max_callers = max_callers
        now = time.monotonic()
        self._global = _Bucket(float(max(burst, total)), now)
        self._lock = threading.Lock()

    @staticmethod
    def _take(bucket: _Bucket, rate: float, capacity: float, now: float) -> float:
        """0 if a token was taken, else the seconds until one will be there."""
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / rate

    def acquire(self, caller: str) -> int:
        """0 when the request may go on, else the Retry-After seconds to answer with 429."""
        now = time.monotonic()
        with self._lock:
            bucket = self._callers.get(caller)
            if bucket is None:
                bucket = self._callers[caller] = _Bucket(float(self.burst), now)
                # Bounded memory under a flood of made-up names: forget the least recently seen.
                while len(self._callers) > self._max_callers:
                    self._callers.popitem(last=False)
            else:
                self._callers.move_to_end(caller)
            wait = self._take(bucket, self.rate, self.burst, now)
            if wait:
                return max(1, math.ceil(wait))
            wait = self._take(self._global, self.total, max(self.burst, self.total), now)
            if wait:
                bucket.tokens += 1  # the caller's token was not spent on anything
                return max(1, math.ceil(wait))
            return 0


class RefusalBudget:
    """Refused proofs per (caller, device), so one caller cannot lock another's device out.

    The vault locks a device after 5 failed proofs in 15 minutes, whoever sent them. The agent stops
    forwarding a caller's requests for a device once the vault refused ``limit`` of them within
    ``window`` seconds, well under that: a container guessing another's PSK spends its own budget,
    not the device's. (Callers on other agents, or several colluding callers, can still add up.)
    """

    def __init__(self, limit: int = 3, window: float = 900.0, *, max_entries: int = 4096) -> None:
        self.limit, self.window, self._max = limit, window, max_entries
        self._seen: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> list[float]:
        times = [t for t in self._seen.get(key, ()) if t > now - self.window]
        if times:
            self._seen[key] = times
            self._seen.move_to_end(key)
        else:
            self._seen.pop(key, None)
        return times

    def exhausted(self, caller: str, device: str) -> int:
        """0 while the caller may still send proofs for ``device``, else seconds until it may."""
        now = time.monotonic()
        with self._lock:
            times = self._recent((caller, device), now)
            if len(times) < self.limit:
                return 0
            return max(1, math.ceil(times[0] + self.window - now))

    def refused(self, caller: str, device: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._seen[(caller, device)] = [*self._recent((caller, device), now), now]
            self._seen.move_to_end((caller, device))
            while len(self._seen) > self._max:
                self._seen.popitem(last=False)
