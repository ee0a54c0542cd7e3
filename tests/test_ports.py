"""fedge.core.ports: picked ports are free, outside the ephemeral range, and never
handed to two pickers at once (the CI failure: a SuperNode's port taken by an outgoing
connection between the pick and the bind)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fedge.core import ports
from fedge.core.ports import RESERVATION_S, ephemeral_port_range, free_port, free_port_block


@pytest.fixture(autouse=True)
def private_reservations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Reservations in this test's own folder, not the machine's."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path / f"fedge-ports-{os.getuid()}"


def test_picked_ports_are_bindable_and_outside_the_ephemeral_range() -> None:
    low, high = ephemeral_port_range()
    for _ in range(20):
        port = free_port()
        assert not low <= port <= high
        assert 1024 <= port <= 65535
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # raises if it were taken


def test_a_block_is_consecutive_free_and_reserved(private_reservations: Path) -> None:
    base = free_port_block(4)
    low, high = ephemeral_port_range()
    socks = []
    try:
        for port in range(base, base + 4):
            assert not low <= port <= high
            sock = socket.socket()
            sock.bind(("127.0.0.1", port))
            socks.append(sock)
    finally:
        for sock in socks:
            sock.close()
    assert sorted(int(p.name) for p in private_reservations.iterdir()) == list(
        range(base, base + 4)
    )


def test_concurrent_pickers_never_share_a_port(tmp_path: Path) -> None:
    script = (
        "import tempfile, sys; tempfile.tempdir = sys.argv[1]\n"
        "from fedge.core.ports import free_port\n"
        "print(*(free_port() for _ in range(25)))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    picked = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        picked += [int(v) for v in out.split()]
    assert len(picked) == 100
    assert len(set(picked)) == 100


def test_a_reserved_port_is_not_picked_again_until_its_reservation_expires(
    private_reservations: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    only = free_port()  # a port free now: make it the only candidate
    (private_reservations / str(only)).unlink()
    monkeypatch.setattr(ports, "_candidate_range", lambda: range(only, only + 1))
    assert free_port() == only
    with pytest.raises(RuntimeError, match="no 1 free consecutive ports"):
        free_port()
    old = time.time() - RESERVATION_S - 1
    os.utime(private_reservations / str(only), (old, old))
    assert free_port() == only


def test_a_port_in_use_is_not_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port()))
        busy.listen()
        taken = busy.getsockname()[1]
        monkeypatch.setattr(ports, "_candidate_range", lambda: range(taken, taken + 1))
        with pytest.raises(RuntimeError, match="found no 1 free"):
            free_port()


def test_a_block_needs_a_positive_size() -> None:
    with pytest.raises(ValueError, match="count must be >= 1"):
        free_port_block(0)


def test_expired_reservations_are_removed(private_reservations: Path) -> None:
    free_port()
    private_reservations.joinpath("1").touch()  # a stale claim of an earlier run
    old = time.time() - RESERVATION_S - 1
    os.utime(private_reservations / "1", (old, old))
    free_port()
    names = {p.name for p in private_reservations.iterdir()}
    assert "1" not in names
    assert len(names) == 2
