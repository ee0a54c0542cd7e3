"""The service's audit log: one JSON line per hard case (and per refused call).

Each line is an object with the keys

``time``        Unix seconds when the answer was sent,
``rpc``         ``"Infer"`` or ``"InferStream"``,
``node``        the node id the case names (``null`` when the call was refused before a
                case was read),
``caller``      the node id of the bearer token (``null`` without tokens or when refused),
``frame``       the case's frame id (``null`` as for ``node``),
``mode``        ``"landmarks"``, ``"crops"``, ``"frames"`` or the raw wire value's name,
``pixel_bytes`` JPEG bytes the case carried (0 in landmarks mode),
``latency_ms``  time from receiving the case to answering it,
``status``      the gRPC status code name (``"OK"``, ``"UNAUTHENTICATED"``, ...),
``cached``      whether the answer was a stored result (a retried case),
``message``     the error message (only when ``status`` is not ``"OK"``).

Lines are written whole, under a lock, and flushed, so a crash loses at most the line
being written and concurrent calls never interleave.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from fedge.core.errors import ConfigError

__all__ = ["AuditEntry", "AuditLog"]


@dataclass(frozen=True)
class AuditEntry:
    """One audit line (see the module docstring for the fields)."""

    rpc: str
    node: str | None
    caller: str | None
    frame: int | None
    mode: str | None
    pixel_bytes: int
    latency_ms: float
    status: str
    cached: bool = False
    message: str = ""


class AuditLog:
    """Append-only JSON-lines audit log.

    Parameters
    ----------
    path:
        File to append to (its folder is created); ``None`` writes to standard error.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._lock = threading.Lock()
        if self.path is None:
            self._stream: IO[str] = sys.stderr
            self._owned = False
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._stream = self.path.open("a", encoding="utf-8")
            except OSError as err:
                raise ConfigError(f"cannot open the audit log {path}: {err.strerror}") from err
            self._owned = True

    def write(self, entry: AuditEntry) -> None:
        """Append one line for ``entry``."""
        record = {"time": round(time.time(), 3), **asdict(entry)}
        record["latency_ms"] = round(entry.latency_ms, 3)
        if entry.status == "OK":
            del record["message"]
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self._stream.closed:  # a call cancelled by stop() that finished late
                return
            self._stream.write(line)
            self._stream.flush()

    def close(self) -> None:
        """Close the file (standard error is left open)."""
        with self._lock:
            if self._owned and not self._stream.closed:
                self._stream.close()
