"""Stop signals as ``KeyboardInterrupt``, so a command's cleanup runs on Ctrl-C and ``kill``.

A process started as a background job of a non-interactive shell inherits SIGINT
ignored, and Python then installs no ``KeyboardInterrupt`` handler: Ctrl-C (or a
supervisor's SIGINT) would be lost and the command would run on to its end. SIGTERM
(``kill``, a service manager, a test's ``terminate()``) has no handler at all and would
skip every ``finally``. :func:`stop_signals_interrupt` handles both for its duration.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["STOP_SIGNALS", "stop_signals_interrupt"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals a command treats as "stop now, cleanly"."""


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Raise ``KeyboardInterrupt`` on SIGINT and SIGTERM inside the block, then restore
    the previous handlers. Off the main thread (where Python allows no handler) it does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
