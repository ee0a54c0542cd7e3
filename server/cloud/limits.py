"""Request limits of the cloud service: cases per node per minute and calls in flight.

``RateLimiter`` is a token bucket per node: a bucket holds at most ``per_minute`` tokens
(the burst), refills at ``per_minute / 60`` tokens per second, and every case takes one;
a case that finds the bucket empty is refused (RESOURCE_EXHAUSTED) and takes nothing.
The clock is injectable, so tests advance time instead of sleeping.

``ConcurrencyLimit`` bounds the calls being served at once; it never waits: a call beyond
the bound is refused at once, so a burst cannot pile up memory in a queue.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fedge.core.errors import ConfigError

__all__ = ["MAX_TRACKED_NODES", "Clock", "ConcurrencyLimit", "RateLimiter"]

MAX_TRACKED_NODES = 10_000
"""Buckets kept before the full ones are forgotten."""

Clock = Callable[[], float]
"""Seconds on a monotonic clock (``time.monotonic`` by default)."""


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets per node.

    Parameters
    ----------
    per_minute:
        Cases a node may send per minute (also the burst); 0 disables the limit.
    clock:
        Monotonic seconds; ``time.monotonic`` unless a test injects its own.
    """

    def __init__(self, per_minute: float, *, clock: Clock = time.monotonic) -> None:
        if per_minute < 0:
            raise ConfigError(f"rate {per_minute} per minute is negative: use 0 for no limit")
        self.per_minute = float(per_minute)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def allow(self, node: str) -> bool:
        """Take one token from ``node``'s bucket; ``False`` (nothing taken) when it is empty."""
        if self.per_minute == 0:
            return True
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(node)
            if bucket is None:
                if len(self._buckets) >= MAX_TRACKED_NODES:
                    self._forget_full(now)
                bucket = self._buckets[node] = _Bucket(tokens=self.per_minute, updated=now)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self.per_minute, bucket.tokens + elapsed * self.per_minute / 60.0)
            bucket.updated = now
            if bucket.tokens < 1.0:
                return False
            bucket.tokens -= 1.0
            return True

    @property
    def tracked_nodes(self) -> int:
        """Nodes with a bucket in memory."""
        with self._lock:
            return len(self._buckets)

    def _forget_full(self, now: float) -> None:
        # a bucket that has refilled is the same as no bucket: forget it (bounded memory
        # when callers without tokens name ever new node ids)
        refill = self.per_minute / 60.0
        self._buckets = {
            node: bucket
            for node, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.updated) * refill < self.per_minute
        }

    def retry_after(self, node: str) -> float:
        """Seconds until ``node``'s bucket holds a token again (0 when it holds one)."""
        if self.per_minute == 0:
            return 0.0
        with self._lock:
            bucket = self._buckets.get(node)
            if bucket is None or bucket.tokens >= 1.0:
                return 0.0
            return (1.0 - bucket.tokens) * 60.0 / self.per_minute


class ConcurrencyLimit:
    """At most ``limit`` holders at once; ``try_acquire`` never blocks."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ConfigError(f"max concurrency {limit} is below 1")
        self.limit = limit
        self._semaphore = threading.BoundedSemaphore(limit)

    def try_acquire(self) -> bool:
        """Take a slot if one is free; ``False`` at once otherwise."""
        return self._semaphore.acquire(blocking=False)

    def release(self) -> None:
        """Give a slot back."""
        self._semaphore.release()
