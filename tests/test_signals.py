"""``fedge.core.signals``: SIGINT and SIGTERM raise KeyboardInterrupt inside the block."""

from __future__ import annotations

import os
import signal

import pytest

from fedge.core.signals import STOP_SIGNALS, stop_signals_interrupt


@pytest.mark.parametrize("sig", STOP_SIGNALS)
def test_a_stop_signal_interrupts_even_where_sigint_was_ignored(sig: int) -> None:
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job inherits it
    try:
        with pytest.raises(KeyboardInterrupt), stop_signals_interrupt():
            os.kill(os.getpid(), sig)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # restored
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
