"""Answered cases by (node id, frame id), so a retried case is not run twice.

``ResultStore`` keeps each ``CloudResult`` as its serialized protobuf in SQLite: in
``<state_dir>/results.sqlite`` when a state directory is given (results survive a restart
of the service), in memory otherwise. ``claim`` serializes work on one key: a retry that
arrives while the first attempt is still running waits for it and then finds its result,
instead of running the teacher a second time.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedge.core.errors import StoreError
from fedge.core.proto import cloud_pb2

__all__ = ["RESULTS_FILE", "ResultStore"]

RESULTS_FILE = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    node_id  TEXT    NOT NULL,
    frame_id INTEGER NOT NULL,
    result   BLOB    NOT NULL,
    created  REAL    NOT NULL,
    PRIMARY KEY (node_id, frame_id)
)
"""


class ResultStore:
    """Stored ``CloudResult`` messages by (node id, frame id).

    Parameters
    ----------
    state_dir:
        Folder for ``results.sqlite``; ``None`` keeps the results in memory only.
    """

    def __init__(self, state_dir: Path | None = None) -> None:
        if state_dir is None:
            target = ":memory:"
        else:
            try:
                Path(state_dir).mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreError(
                    f"cannot create the state dir {state_dir}: {err.strerror}"
                ) from err
            target = str(Path(state_dir) / RESULTS_FILE)
        self.path = None if state_dir is None else Path(target)
        try:
            self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
            self._db.execute(
                "PRAGMA journal_mode=WAL" if state_dir else "PRAGMA journal_mode=MEMORY"
            )
            self._db.execute(_SCHEMA)
        except sqlite3.Error as err:
            raise StoreError(f"cannot open the result store {target}: {err}") from err
        self._lock = threading.Lock()
        self._claims: dict[tuple[str, int], tuple[threading.Lock, int]] = {}
        self._claims_lock = threading.Lock()

    def get(self, node_id: str, frame_id: int) -> cloud_pb2.CloudResult | None:
        """Return the stored result of a case, or ``None``."""
        with self._lock:
            row = self._db.execute(
                "SELECT result FROM results WHERE node_id = ? AND frame_id = ?",
                (node_id, frame_id),
            ).fetchone()
        if row is None:
            return None
        return cloud_pb2.CloudResult.FromString(row[0])

    def put(self, result: cloud_pb2.CloudResult) -> None:
        """Store the answer to a case (the first answer wins)."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO results (node_id, frame_id, result, created) "
                "VALUES (?, ?, ?, ?)",
                (result.node_id, result.frame_id, result.SerializeToString(), time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    @contextmanager
    def claim(self, node_id: str, frame_id: int) -> Iterator[None]:
        """Hold the key (node id, frame id) for the block; other claims on it wait."""
        key = (node_id, frame_id)
        with self._claims_lock:
            lock, users = self._claims.get(key, (threading.Lock(), 0))
            self._claims[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._claims_lock:
                lock, users = self._claims[key]
                if users == 1:
                    del self._claims[key]
                else:
                    self._claims[key] = (lock, users - 1)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
