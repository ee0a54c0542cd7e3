"""Seeds derived from a run's seed, stable across processes and machines."""

from __future__ import annotations

import zlib

__all__ = ["round_seed"]


def round_seed(seed: int, server_round: int, partition_id: int) -> int:
    """A seed unique to (run seed, round, partition), stable across processes."""
    return zlib.crc32(f"{seed}/{server_round}/{partition_id}".encode())
