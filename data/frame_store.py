"""The node-local frame store: raw frames as JPEG files plus an SQLite index.

Frames never leave the node from here; the store only keeps them for local training
and for the uploader to pick hard cases from. Layout under ``root``::

    index.sqlite          frame rows (WAL mode)
    frames/YYYYMMDD/*.jpg one JPEG per stored frame
    tmp/                  JPEGs being written (removed on open)
    writer.lock           held by the one process that adds frames

Writes are crash-safe: a JPEG goes to ``tmp/``, is fsynced and renamed into ``frames/``,
and only then is its row inserted. Opening the store as a writer reconciles what a
crash left behind (temporary files, rows without a file, files without a row). The
store stays within ``budget_bytes`` by evicting the oldest frames first, frames that are
neither hard cases nor labelled before the rest. A disk that is full raises
``StoreError`` and leaves every frame already stored intact.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from fedge.core.errors import StoreError
from fedge.core.files import atomic_write
from fedge.core.records import FrameResult

__all__ = ["FrameStore", "LabelStatus", "ReconcileReport", "StoredFrame"]

SCHEMA_VERSION = 1
DEFAULT_BUDGET_BYTES = 2 * 1024**3
DEFAULT_MIN_FREE_BYTES = 32 * 1024**2
_EVICT_BATCH = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS frames (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    time          REAL    NOT NULL,
    source        TEXT    NOT NULL,
    frame_index   INTEGER NOT NULL,
    path          TEXT    NOT NULL UNIQUE,
    bytes         INTEGER NOT NULL,
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    detections    TEXT    NOT NULL,
    persons       TEXT    NOT NULL,
    hard          INTEGER NOT NULL DEFAULT 0,
    hard_reasons  TEXT    NOT NULL DEFAULT '[]',
    label_status  TEXT    NOT NULL DEFAULT 'unlabelled',
    label         TEXT,
    label_source  TEXT,
    labelled_at   REAL
);
CREATE INDEX IF NOT EXISTS frames_status ON frames (label_status, id);
CREATE INDEX IF NOT EXISTS frames_hard ON frames (hard, id);
"""


class LabelStatus(StrEnum):
    """Where a stored frame stands on its way to a cloud label."""

    UNLABELLED = "unlabelled"  # an ordinary frame, not a hard case
    SUPPRESSED = "suppressed"  # qualified as hard, held back by rate limit or duplicate check
    PENDING = "pending"  # a hard case waiting for the uploader
    SENT = "sent"  # uploaded, waiting for the cloud's label
    LABELLED = "labelled"  # the cloud's label is stored


@dataclass(frozen=True)
class StoredFrame:
    """One row of the store; ``path`` is the JPEG's absolute path."""

    id: int
    time: float
    source: str
    frame_index: int
    path: Path
    bytes: int
    width: int
    height: int
    detections: list[dict[str, Any]]
    persons: list[dict[str, Any]]
    hard: bool
    hard_reasons: list[str]
    label_status: LabelStatus
    label: Any
    label_source: str | None

    def load_image(self) -> np.ndarray:
        """Decode and return the stored frame (BGR ``uint8``)."""
        import cv2

        image = cv2.imread(str(self.path), cv2.IMREAD_COLOR)
        if image is None:
            raise StoreError(f"frame {self.id} is missing or unreadable at {self.path}")
        return image


@dataclass(frozen=True)
class ReconcileReport:
    """What opening the store cleaned up after a crash."""

    temp_files_removed: int = 0
    rows_without_file: int = 0
    files_without_row: int = 0

    @property
    def clean(self) -> bool:
        """Whether there was nothing to repair."""
        return not (self.temp_files_removed or self.rows_without_file or self.files_without_row)


class FrameStore:
    """JPEG frames plus an SQLite index, bounded by a disk budget.

    ``FrameStore(root)`` opens (or creates) the store as its single frame writer: it
    takes ``writer.lock``, reconciles crash leftovers (see ``recovery``) and accepts
    ``add``. ``FrameStore.open_reader(root)`` opens an existing store for the training
    side or the uploader: reading and labelling only, no lock, no reconciliation.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        *,
        jpeg_quality: int = 90,
        fsync: bool = True,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        writer: bool = True,
    ) -> None:
        if budget_bytes <= 0:
            raise StoreError(f"store budget must be positive, got {budget_bytes} bytes")
        self.root = Path(root)
        self.budget_bytes = int(budget_bytes)
        self.jpeg_quality = int(jpeg_quality)
        self.fsync = fsync
        self.min_free_bytes = int(min_free_bytes)
        self.writer = writer
        self.recovery = ReconcileReport()
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._seq = 0
        db_path = self.root / "index.sqlite"
        if not writer and not db_path.exists():
            raise StoreError(f"no frame store at {self.root}: run `fedge edge` to create one")
        try:
            if writer:
                (self.root / "frames").mkdir(parents=True, exist_ok=True)
                (self.root / "tmp").mkdir(exist_ok=True)
                self._take_writer_lock()
            self._db = sqlite3.connect(db_path, check_same_thread=False, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            if writer:
                self._db.executescript(_SCHEMA)
                self._db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                self._db.commit()
                self.recovery = self._reconcile()
            self._jpeg_bytes = self._sum_jpeg_bytes()
        except (OSError, sqlite3.Error) as err:
            self._release_writer_lock()
            raise StoreError(f"cannot open frame store at {self.root}: {err}") from err

    @classmethod
    def open_reader(cls, root: str | os.PathLike[str]) -> FrameStore:
        """Open an existing store to read frames and set labels (no ``add``)."""
        return cls(root, writer=False)

    # -- writing -----------------------------------------------------------------------

    def add(self, image: np.ndarray, result: FrameResult) -> int:
        """Store ``image`` with its per-frame ``result``; return the new frame id.

        Raises ``StoreError`` when the frame cannot be written (disk full, budget
        smaller than one frame); frames stored earlier are not affected.
        """
        import cv2

        if not self.writer:
            raise StoreError("this frame store was opened read-only; open it as the writer")
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise StoreError(f"cannot encode frame {result.frame} as JPEG")
        data = encoded.tobytes()
        with self._lock:
            self._make_room(len(data))
            relative = self._next_name(result.time)
            final = self.root / relative
            self._write_file(final, data)
            try:
                cursor = self._db.execute(
                    "INSERT INTO frames (time, source, frame_index, path, bytes, width, height,"
                    " detections, persons, hard, hard_reasons, label_status)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        result.time,
                        result.source,
                        result.frame,
                        relative.as_posix(),
                        len(data),
                        int(image.shape[1]),
                        int(image.shape[0]),
                        json.dumps([d.to_json() for d in result.detections]),
                        json.dumps([p.to_json() for p in result.persons]),
                        int(result.hard),
                        json.dumps(list(result.hard_reasons)),
                        _initial_status(result).value,
                    ),
                )
                self._db.commit()
            except sqlite3.Error as err:
                self._db.rollback()
                final.unlink(missing_ok=True)
                raise StoreError(f"cannot index frame in {self.root}: {err}") from err
            self._jpeg_bytes += len(data)
            frame_id = cursor.lastrowid
        assert frame_id is not None
        return int(frame_id)

    def set_label(self, frame_id: int, label: Any, source: str) -> None:
        """Record the cloud's ``label`` (JSON-serialisable) for a frame; status → labelled."""
        self._update(
            "UPDATE frames SET label = ?, label_source = ?, labelled_at = ?, label_status = ?"
            " WHERE id = ?",
            (json.dumps(label), source, time.time(), LabelStatus.LABELLED.value, frame_id),
            frame_id,
        )

    def set_label_status(self, frame_id: int, status: LabelStatus | str) -> None:
        """Move a frame to ``status`` (e.g. ``sent`` once the uploader has shipped it)."""
        self._update(
            "UPDATE frames SET label_status = ? WHERE id = ?",
            (LabelStatus(status).value, frame_id),
            frame_id,
        )

    # -- reading -----------------------------------------------------------------------

    def get(self, frame_id: int) -> StoredFrame:
        """Return one stored frame; ``StoreError`` when there is no such id."""
        rows = self._select("WHERE id = ?", (frame_id,))
        if not rows:
            raise StoreError(f"no frame {frame_id} in {self.root} (evicted or never stored)")
        return rows[0]

    def iter_frames(
        self,
        *,
        labelled_only: bool = False,
        hard_only: bool = False,
        since_id: int = 0,
        batch: int = 256,
    ) -> Iterator[StoredFrame]:
        """Yield stored frames oldest first, optionally only labelled or hard ones."""
        clauses = ["id > ?"]
        if labelled_only:
            clauses.append(f"label_status = '{LabelStatus.LABELLED.value}'")
        if hard_only:
            clauses.append("hard = 1")
        where = "WHERE " + " AND ".join(clauses)
        last = since_id
        while True:
            rows = self._select(f"{where} ORDER BY id LIMIT {int(batch)}", (last,))
            yield from rows
            if len(rows) < batch:
                return
            last = rows[-1].id

    def hard_cases(
        self, status: LabelStatus | str | None = LabelStatus.PENDING, limit: int | None = None
    ) -> list[StoredFrame]:
        """Return hard cases oldest first, those in ``status`` only unless it is ``None``."""
        sql = "WHERE hard = 1"
        params: tuple[Any, ...] = ()
        if status is not None:
            sql += " AND label_status = ?"
            params = (LabelStatus(status).value,)
        sql += " ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._select(sql, params)

    def usage_bytes(self) -> int:
        """Bytes the store occupies: JPEGs plus the live pages of the index."""
        with self._lock:
            return self._jpeg_bytes + self._db_live_bytes()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM frames").fetchone()[0])

    def close(self) -> None:
        """Close the index and release the writer lock."""
        with self._lock:
            try:
                self._db.close()
            finally:
                self._release_writer_lock()

    def __enter__(self) -> FrameStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------

    def _take_writer_lock(self) -> None:
        fd = os.open(self.root / "writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(fd)
            raise StoreError(
                f"frame store {self.root} is in use by another edge agent; "
                "stop it or use another --store-dir"
            ) from err
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _release_writer_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def _reconcile(self) -> ReconcileReport:
        temp_removed = 0
        for leftover in (self.root / "tmp").iterdir():
            leftover.unlink(missing_ok=True)
            temp_removed += 1
        known: set[str] = set()
        missing: list[int] = []
        for frame_id, relative in self._db.execute("SELECT id, path FROM frames"):
            if (self.root / relative).is_file():
                known.add(relative)
            else:
                missing.append(frame_id)
        if missing:
            self._db.executemany("DELETE FROM frames WHERE id = ?", [(i,) for i in missing])
            self._db.commit()
        orphans = 0
        for path in (self.root / "frames").rglob("*.jpg"):
            if path.relative_to(self.root).as_posix() not in known:
                path.unlink(missing_ok=True)
                orphans += 1
        return ReconcileReport(temp_removed, len(missing), orphans)

    def _sum_jpeg_bytes(self) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM frames").fetchone()[0])

    def _db_live_bytes(self) -> int:
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size)

    def _make_room(self, incoming: int) -> None:
        """Evict oldest frames until ``incoming`` more bytes fit in the budget."""
        if incoming + self._db_live_bytes() > self.budget_bytes:
            raise StoreError(
                f"one frame ({incoming} bytes) does not fit the store budget of "
                f"{self.budget_bytes} bytes; raise --store-budget-mb"
            )
        while self._jpeg_bytes + self._db_live_bytes() + incoming > self.budget_bytes:
            rows = self._db.execute(
                "SELECT id, path, bytes FROM frames ORDER BY"
                " (hard = 1 OR label_status = ?) ASC, id ASC LIMIT ?",
                (LabelStatus.LABELLED.value, _EVICT_BATCH),
            ).fetchall()
            if not rows:
                return
            need = self._jpeg_bytes + self._db_live_bytes() + incoming - self.budget_bytes
            victims = []
            for row in rows:
                victims.append(row)
                need -= row[2]
                if need <= 0:
                    break
            self._db.executemany("DELETE FROM frames WHERE id = ?", [(v[0],) for v in victims])
            self._db.commit()
            for _, relative, size in victims:
                (self.root / relative).unlink(missing_ok=True)
                self._jpeg_bytes -= size

    def _next_name(self, frame_time: float) -> Path:
        self._seq += 1
        stamp = time.strftime("%Y%m%d", time.localtime(frame_time))
        name = f"{int(frame_time * 1000):013d}-{os.getpid()}-{self._seq:06d}.jpg"
        return Path("frames") / stamp / name

    def _write_file(self, final: Path, data: bytes) -> None:
        """Write ``data`` to ``final`` atomically: temp file, fsync, rename."""
        free = shutil.disk_usage(self.root).free
        if free - len(data) < self.min_free_bytes:
            raise StoreError(
                f"disk holding {self.root} is full ({free // 1024**2} MiB free, "
                f"{self.min_free_bytes // 1024**2} MiB kept in reserve); free space or "
                "lower --store-budget-mb"
            )
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(final, data, tmp_dir=self.root / "tmp", fsync=self.fsync)
        except OSError as err:
            raise StoreError(
                f"cannot write frame to {self.root}: {err.strerror or err}; "
                "free disk space or lower --store-budget-mb"
            ) from err

    def _update(self, sql: str, params: tuple[Any, ...], frame_id: int) -> None:
        with self._lock:
            try:
                cursor = self._db.execute(sql, params)
                self._db.commit()
            except sqlite3.Error as err:
                self._db.rollback()
                raise StoreError(f"cannot update frame {frame_id} in {self.root}: {err}") from err
        if cursor.rowcount == 0:
            raise StoreError(f"no frame {frame_id} in {self.root} (evicted or never stored)")

    def _select(self, tail: str, params: tuple[Any, ...]) -> list[StoredFrame]:
        sql = (
            "SELECT id, time, source, frame_index, path, bytes, width, height, detections,"
            " persons, hard, hard_reasons, label_status, label, label_source FROM frames " + tail
        )
        with self._lock:
            try:
                rows = self._db.execute(sql, params).fetchall()
            except sqlite3.Error as err:
                raise StoreError(f"cannot read frame store {self.root}: {err}") from err
        return [self._row_to_frame(row) for row in rows]

    def _row_to_frame(self, row: tuple[Any, ...]) -> StoredFrame:
        return StoredFrame(
            id=row[0],
            time=row[1],
            source=row[2],
            frame_index=row[3],
            path=self.root / row[4],
            bytes=row[5],
            width=row[6],
            height=row[7],
            detections=json.loads(row[8]),
            persons=json.loads(row[9]),
            hard=bool(row[10]),
            hard_reasons=json.loads(row[11]),
            label_status=LabelStatus(row[12]),
            label=json.loads(row[13]) if row[13] is not None else None,
            label_source=row[14],
        )


def _initial_status(result: FrameResult) -> LabelStatus:
    if result.hard:
        return LabelStatus.PENDING
    if result.hard_reasons:
        return LabelStatus.SUPPRESSED
    return LabelStatus.UNLABELLED
