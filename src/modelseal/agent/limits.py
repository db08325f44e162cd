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
