"""Loopback port helpers shared by the deployment tests."""

from __future__ import annotations

import socket

from fedge.local_federation import free_port

__all__ = ["accepts_connections", "free_port_base", "port_is_free"]


def port_is_free(port: int, *, reuse_address: bool = False) -> bool:
    """Whether a server could bind ``port``; ``reuse_address`` ignores TIME_WAIT leftovers."""
    with socket.socket() as sock:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_base(count: int) -> int:
    """A port P with P..P+count-1 all free on 127.0.0.1 right now."""
    for _ in range(50):
        base = free_port()
        if base + count <= 65535 and all(port_is_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")


def accepts_connections(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
