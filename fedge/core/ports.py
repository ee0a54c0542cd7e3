"""Free loopback ports for the servers fedge starts, picked so nothing else takes them.

A port the kernel hands out for ``bind(("127.0.0.1", 0))`` lies in the *ephemeral*
range (``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 by default), the same
range every outgoing connection draws its source port from: between picking such a
port and a server binding it a few seconds later, any ``connect()`` on the machine may
take it ("address already in use"). So ports are picked below that range, where only an
explicit ``bind`` can land, and each pick is reserved for a while in a per-user folder,
so concurrent fedge processes (parallel tests, several demos) never pick the same one.
"""

from __future__ import annotations

import os
import random
import socket
import tempfile
import time
from pathlib import Path

__all__ = [
    "RESERVATION_S",
    "ephemeral_port_range",
    "free_port",
    "free_port_block",
    "port_is_free",
]

RESERVATION_S = 600.0
"""How long a picked port stays reserved against other fedge pickers."""

_FLOOR = 20000  # below: well-known services and other software's fixed ports
_DEFAULT_EPHEMERAL = (32768, 60999)


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' source ports (Linux default elsewhere)."""
    try:
        low, high = (
            int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        )
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL
    return low, high


def _candidate_range() -> range:
    """Ports outside the ephemeral range, the larger side of it."""
    low, high = ephemeral_port_range()
    below = range(_FLOOR, low) if low > _FLOOR else range(0)
    above = range(max(high + 1, _FLOOR), 65536)
    return below if len(below) >= len(above) else above


def port_is_free(port: int, *, reuse_address: bool = False) -> bool:
    """Whether a server could bind 127.0.0.1:``port`` now; ``reuse_address`` ignores
    connections of an earlier server left in TIME_WAIT."""
    with socket.socket() as sock:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _reservations() -> Path:
    """The per-user folder of reservations, with expired ones removed."""
    folder = Path(tempfile.gettempdir()) / f"fedge-ports-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    expired = time.time() - RESERVATION_S
    for path in folder.iterdir():
        try:
            if path.stat().st_mtime < expired:
                path.unlink()
        except FileNotFoundError:
            pass  # another picker removed it first
    return folder


def _reserve(folder: Path, port: int) -> bool:
    """Claim ``port`` for this process unless another pick holds it (stale claims expire)."""
    path = folder / str(port)
    for _ in range(2):
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return True
        except FileExistsError:
            try:
                if time.time() - path.stat().st_mtime < RESERVATION_S:
                    return False
                path.unlink()  # an old claim: its server has long started (or never will)
            except FileNotFoundError:
                pass
    return False


def free_port_block(count: int) -> int:
    """A port ``P`` with ``P .. P+count-1`` free on 127.0.0.1 and reserved for this caller.

    The block lies outside the ephemeral range, so no outgoing connection takes one of
    its ports before the caller's servers bind them.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    candidates = _candidate_range()
    if len(candidates) < count:
        raise RuntimeError("no ports outside the ephemeral range to pick from")
    folder = _reservations()
    pick = random.SystemRandom()
    for _ in range(200):
        base = pick.randrange(candidates.start, candidates.stop - count + 1)
        ports = range(base, base + count)
        if not all(port_is_free(p) for p in ports):
            continue
        claimed = []
        for port in ports:
            if not _reserve(folder, port):
                break
            claimed.append(port)
        if len(claimed) == count:
            return base
        for port in claimed:  # part of the block is someone else's: give ours back
            (folder / str(port)).unlink(missing_ok=True)
    raise RuntimeError(f"found no {count} free consecutive ports in {candidates}")


def free_port() -> int:
    """A TCP port free on 127.0.0.1, outside the ephemeral range, reserved for this caller."""
    return free_port_block(1)
