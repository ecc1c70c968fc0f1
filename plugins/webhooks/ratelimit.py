"""Token buckets by key: ``rate`` requests per second on average, bursts up to ``burst``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MAX_KEYS = 100_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBucketLimiter:
    """``acquire(key)`` returns 0 when a request may pass, else the seconds until it would (for Retry-After).

    At most ``max_keys`` buckets are kept (the least recently used go first, and a new bucket is full), so keys an
    attacker chooses (source addresses) cannot grow memory without bound.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _refilled(self, key: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.pop(key, None)  # Re-inserted last: the dict's order is least recently used first.
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            if len(self._buckets) >= self.max_keys:
                del self._buckets[next(iter(self._buckets))]
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        self._buckets[key] = bucket
        return bucket

    def _wait(self, bucket: _Bucket) -> int:
        return max(1, math.ceil((1 - bucket.tokens) / self.rate))

    def acquire(self, key: str) -> int:
        if not self.enabled:
            return 0
        bucket = self._refilled(key)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0
        return self._wait(bucket)

    def check(self, key: str) -> int:
        """What ``acquire`` would answer, without spending a token."""
        if not self.enabled or key not in self._buckets:  # A new bucket is full: no need to make one to know it.
            return 0
        bucket = self._refilled(key)
        return 0 if bucket.tokens >= 1 else self._wait(bucket)
