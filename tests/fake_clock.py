"""A clock that tests set by hand, for code that takes ``clock: Callable[[], float]``."""

from __future__ import annotations

import threading

__all__ = ["FakeClock"]


class FakeClock:
    """Returns ``now`` and then moves it on by ``step``; counts how often it was read.

    ``wait_for_reads(n)`` blocks until the clock has been read ``n`` times, so a test
    knows how far a thread that reads it has got.
    """

    def __init__(self, start: float = 0.0, step: float = 0.0) -> None:
        self.now = start
        self.step = step
        self.reads = 0
        self._read = threading.Condition()

    def __call__(self) -> float:
        with self._read:
            value = self.now
            self.now += self.step
            self.reads += 1
            self._read.notify_all()
            return value

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward."""
        with self._read:
            self.now += seconds

    def wait_for_reads(self, count: int, timeout: float = 30.0) -> None:
        """Block until the clock has been read ``count`` times (fail after ``timeout``)."""
        with self._read:
            if not self._read.wait_for(lambda: self.reads >= count, timeout):
                raise AssertionError(f"clock read {self.reads} times, expected {count}")
